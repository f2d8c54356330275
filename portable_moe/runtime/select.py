"""Run-time backend selection: explicit choice > PORTABLE_MOE_BACKEND > automatic. Automatic ranks
the backends available on the device: those whose conformance results for this device and dtype
passed come first, then a fixed preference order per device kind, the reference last of the proven."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import knobs, registry
from ..backends.devices import Device
from ..ir import DType
from . import results

# Fixed preference when conformance results do not decide (fastest first on that kind of device).
PREFERENCE = {
    "cuda": ("triton", "tvm", "onnxruntime", "reference"),
    "rocm": ("triton", "tvm", "onnxruntime", "reference"),
    "cpu": ("onnxruntime", "tvm", "reference", "triton"),
    "opencl": ("tvm",),
}


@dataclass
class Candidate:
    name: str
    usable: bool
    reason: str            # why not usable, or why ranked where it is
    proven: bool | None = None   # conformance verdict for this device and dtype, None if never run


@dataclass
class Selection:
    device: Device
    dtype: DType
    source: str                      # explicit | env | automatic
    ranked: list[str]                # usable backends, best first
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def winner(self) -> str:
        return self.ranked[0]

    def explain(self) -> str:
        lines = [f"backend for {self.device.id} ({self.device.name}) in {self.dtype.value}: {self.winner} "
                 f"(chosen {self.source})"]
        for c in self.candidates:
            mark = "+" if c.usable else "-"
            lines.append(f"  {mark} {c.name:12} {c.reason}")
        return "\n".join(lines)


def preference(device: Device) -> tuple[str, ...]:
    order = PREFERENCE.get(device.kind, ("reference",))
    others = tuple(n for n in registry.backend_names() if n not in order)
    return order + others


def candidate(name: str, device: Device, dtype: DType) -> Candidate:
    try:
        backend = registry.load(name)
    except registry.BackendUnavailable as e:
        return Candidate(name, False, e.reason)
    if not backend.executes:
        return Candidate(name, False, f"{name}: compiles only, never executes")
    reason = backend.availability(device)
    if reason:
        return Candidate(name, False, reason)
    verdict = results.lookup(name, device, dtype.value)
    proven = None if verdict is None else bool(verdict["passed"])
    text = {None: "no conformance results yet", True: "conformance passed", False: "conformance FAILED"}[proven]
    return Candidate(name, True, text, proven)


def rank(device: Device, dtype: DType) -> list[Candidate]:
    order = preference(device)
    cands = [candidate(n, device, dtype) for n in order]
    usable = [c for c in cands if c.usable]
    # proven first, unknown next, failed last; within each, the fixed preference order
    usable.sort(key=lambda c: ({True: 0, None: 1, False: 2}[c.proven], order.index(c.name)))
    return usable + [c for c in cands if not c.usable]


def select(device: Device, dtype: DType, explicit: str | None = None) -> Selection:
    """Ranks the backends for a device; an explicit or environment choice goes first (it must exist)."""
    cands = rank(device, dtype)
    ranked = [c.name for c in cands if c.usable]
    choice, source = (explicit, "explicit") if explicit else (knobs.backend(), "env")
    if choice:
        registry.load(choice)          # unknown names fail here, listing the known ones
        chosen = next(c for c in cands if c.name == choice) if choice in [c.name for c in cands] else None
        if chosen is not None and not chosen.usable:
            raise registry.RegistryError(f"backend '{choice}' cannot run on {device.id}: {chosen.reason}")
        ranked = [choice] + [n for n in ranked if n != choice]
        return Selection(device, dtype, source if source == "explicit" else "by PORTABLE_MOE_BACKEND", ranked,
                         cands)
    if not ranked:
        raise registry.RegistryError(f"no backend can run on {device.id}: "
                                     + "; ".join(c.reason for c in cands))
    return Selection(device, dtype, "automatically", ranked, cands)
