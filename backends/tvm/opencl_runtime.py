"""Runs TVM-generated OpenCL kernels through pyopencl (this TVM build has no OpenCL runtime).

TVM names a kernel's buffer parameters `<buffer>_ptr` and its scalar parameters after the shape
variables, so the signature is read from the source and the arguments are matched by name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from ..base import BackendError

SIGNATURE = re.compile(r"__kernel void (\w+)\(([^)]*)\)\s*\{")
SCALARS = {"long": np.int64, "int": np.int32, "float": np.float32}


@cache
def context():
    import pyopencl as cl

    platforms = cl.get_platforms()
    if not platforms:
        raise BackendError("tvm/opencl: pyopencl finds no OpenCL platform (install pocl-opencl-icd)")
    device = platforms[0].get_devices()[0]
    ctx = cl.Context([device])
    return ctx, cl.CommandQueue(ctx), device


def platform_device():
    """(platform name, device name) of the first OpenCL device, or None when there is none."""
    try:
        import pyopencl as cl
    except ImportError:
        return None
    try:
        for p in cl.get_platforms():
            for d in p.get_devices():
                return p.name, d.name, d.global_mem_size
    except cl.Error:        # no ICD loader or no platform installed: the same as no device
        return None
    return None


@dataclass
class ClKernel:
    name: str
    params: list[tuple[str, str]]    # (kind 'buffer'|numpy scalar type name, name)
    kernel: object

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], tensors: dict, scalars: dict,
                 outputs: tuple[str, ...]):
        """Copies the tensors in, runs the kernel, copies the ones named in `outputs` back."""
        import pyopencl as cl

        ctx, queue, _ = context()
        if any(g == 0 for g in grid):
            return
        mf = cl.mem_flags
        bufs, args = {}, []
        for kind, name in self.params:
            if kind == "buffer":
                t = tensors[name]
                host = t.detach().contiguous().numpy()
                bufs[name] = cl.Buffer(ctx, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=host) if host.size else \
                    cl.Buffer(ctx, mf.READ_WRITE, 4)
                args.append(bufs[name])
            else:
                args.append(SCALARS[kind](scalars[re.sub(r"_\d+$", "", name)]))
        kernel = self.kernel
        global_size = tuple(g * b for g, b in zip(grid, block))
        kernel(queue, global_size, block, *args)
        for name in outputs:
            t = tensors[name]
            if t.numel():
                out = np.empty(t.shape, dtype=t.numpy().dtype)
                cl.enqueue_copy(queue, out, bufs[name])
                t.copy_(torch.from_numpy(out))
        queue.finish()


def build(source: str) -> dict[str, ClKernel]:
    """Compiles TVM's OpenCL source; one ClKernel per __kernel function."""
    import pyopencl as cl

    ctx, _, _ = context()
    program = cl.Program(ctx, source).build()
    kernels = {}
    for name, params in SIGNATURE.findall(source):
        parsed = []
        for p in params.split(","):
            words = p.replace("restrict", "").replace("*", " * ").split()
            if "*" in words:
                parsed.append(("buffer", words[-1].removesuffix("_ptr")))
            else:
                parsed.append((words[-2], words[-1]))
        kernels[name] = ClKernel(name, parsed, cl.Kernel(program, name))
    return kernels
