"""OpenCL devices through pyopencl, for any backend that generates OpenCL C (backend-agnostic): the first
platform's device, programs built from source, and kernel launches on torch tensors (copied in, the
named outputs copied back)."""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from .base import BackendError


@cache
def context():
    import pyopencl as cl

    platforms = cl.get_platforms()
    if not platforms:
        raise BackendError("opencl: pyopencl finds no OpenCL platform (install pocl-opencl-icd)")
    device = platforms[0].get_devices()[0]
    ctx = cl.Context([device])
    return ctx, cl.CommandQueue(ctx), device


def platform_device():
    """(platform name, device name, memory) of the first OpenCL device, or None when there is none."""
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


def program(source: str):
    import pyopencl as cl

    return cl.Program(context()[0], source).build()


def launch(kernel, grid: tuple[int, ...], block: tuple[int, ...], args: list, outputs: list[torch.Tensor]):
    """Runs kernel on grid x block work-items; tensor arguments are copied to the device, the tensors in
    `outputs` (contiguous) copied back; other arguments are passed as they are (numpy scalars)."""
    import pyopencl as cl

    if any(g == 0 for g in grid):
        return
    ctx, queue, _ = context()
    flags = cl.mem_flags.READ_WRITE
    buffers = {id(a): cl.Buffer(ctx, flags | cl.mem_flags.COPY_HOST_PTR, hostbuf=a.numpy()) if a.numel() else
               cl.Buffer(ctx, flags, 4) for a in args if isinstance(a, torch.Tensor)}
    kernel(queue, tuple(g * b for g, b in zip(grid, block)), block,
           *[buffers[id(a)] if isinstance(a, torch.Tensor) else a for a in args])
    for t in outputs:
        if t.numel():
            out = np.empty(t.shape, dtype=t.numpy().dtype)
            cl.enqueue_copy(queue, out, buffers[id(t)])
            t.copy_(torch.from_numpy(out))
    queue.finish()
