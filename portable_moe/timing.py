"""The one timer of the benchmarks and of the balancer's calibration: wall-clock milliseconds per call,
the device synchronised after each call, and a side-by-side form that interleaves the variants so that
all of them see the same load. torch is imported only to wait for a GPU."""

from __future__ import annotations

import time
from collections.abc import Callable


def synchronize(device=None):
    """Waits for the device's queued work (a Device, a torch device or its name; nothing to wait for on
    the CPU)."""
    name = str(getattr(device, "torch_device", device) or "cpu")
    if not name.startswith("cpu"):
        import torch

        getattr(torch, torch.device(name).type).synchronize()


def timed_call(fn: Callable[[], object], device=None) -> tuple[object, float]:
    """(what fn returned, milliseconds it took with the device synchronised)."""
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, (time.perf_counter() - t0) * 1e3


def time_ms(fn: Callable[[], object], repeat: int, device=None, warm_up: bool = True) -> list[float]:
    """One warm-up call (unless done already), then `repeat` timed calls, in milliseconds."""
    if warm_up:
        timed_call(fn, device)
    return [timed_call(fn, device)[1] for _ in range(repeat)]


def side_by_side_ms(fns: dict[str, Callable[[], object]], repeat: int, device=None) -> dict[str, list[float]]:
    """Every variant warmed up, then `repeat` rounds that time each variant once: on a shared machine
    the variants see the same load, so their ratios hold even when the absolute times drift."""
    for fn in fns.values():
        time_ms(fn, 0, device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name] += time_ms(fn, 1, device, warm_up=False)
    return times
