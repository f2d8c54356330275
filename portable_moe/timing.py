"""The one timer of the benchmarks: wall-clock milliseconds per call, the device synchronised after each
call, and a side-by-side form that interleaves the variants so that all of them see the same load."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..backends.devices import Device


def synchronize(device: Device | str | None = None):
    """Waits for the device's queued work (nothing to wait for on the CPU)."""
    kind = torch.device(getattr(device, "torch_device", device) or "cpu").type
    if kind != "cpu":
        getattr(torch, kind).synchronize()


def time_ms(fn: Callable[[], object], repeat: int, device: Device | str | None = None,
            warm_up: bool = True) -> list[float]:
    """One warm-up call (unless done already), then `repeat` timed calls, in milliseconds."""
    if warm_up:
        fn()
        synchronize(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def side_by_side_ms(fns: dict[str, Callable[[], object]], repeat: int,
                    device: Device | str | None = None) -> dict[str, list[float]]:
    """Every variant warmed up, then `repeat` rounds that time each variant once: on a shared machine
    the variants see the same load, so their ratios hold even when the absolute times drift."""
    for fn in fns.values():
        time_ms(fn, 0, device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name] += time_ms(fn, 1, device, warm_up=False)
    return times
