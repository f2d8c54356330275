"""OpenCL devices through pyopencl, for any backend that generates OpenCL C (backend-agnostic): the first
platform's device, described and opened, programs built from source, and kernel launches on torch tensors
(copied in, the named outputs copied back)."""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from .base import BackendError
from .devices import Device


@cache
def context():
    import pyopencl as cl

    platforms = cl.get_platforms()
    if not platforms:
        raise BackendError("opencl: pyopencl finds no OpenCL platform (install pocl-opencl-icd)")
    device = platforms[0].get_devices()[0]
    ctx = cl.Context([device])
    return ctx, cl.CommandQueue(ctx), device


def devices() -> list[Device]:
    """The first OpenCL platform's first device, described as a Device; none without pyopencl or an ICD."""
    try:
        import pyopencl as cl
    except ImportError:
        return []
    try:
        platform = cl.get_platforms()[0]
        device = platform.get_devices()[0]
    except (cl.Error, IndexError):        # no ICD loader, no platform or no device
        return []
    vendor = "pocl" if "Portable" in platform.name else platform.name.split()[0].lower()
    arch = "pocl" if vendor == "pocl" else "opencl"
    return [Device("opencl", 0, vendor, device.name, arch, int(device.global_mem_size), platform.name)]


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
