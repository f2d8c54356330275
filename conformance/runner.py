"""The runner: for each backend x device x dtype, every case's samples, with a progress bar, known
failures applied, and verdicts written into the results cache that run-time selection reads.

Backends are registered names (found through portable_moe.registry) or Backend instances (tests pass
deliberately broken ones). One that cannot load, cannot run on a device, or only compiles is listed
with the verdict 'unavailable: reason' and does not count for the exit status.

Budget: a backend or device kind that runs slowly gets smaller samples. A backend may declare
`conformance_scale = {"cpu": "tiny"}` (device kind -> scale name); SLOW holds the defaults for the
in-tree ones (Triton on the CPU runs through its interpreter, ~1000x slower than compiled code). A
"tiny" backend runs "tiny-full" in the full tier: the same sizes with every layer sample and the models."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from fnmatch import fnmatchcase
from importlib import metadata

from .. import registry
from ..backends.base import Backend
from ..backends.devices import Device, discover
from ..ir import COMPUTE_FLOATS, DType
from ..runtime import results as results_cache
from ..runtime.compile import resolve_device
from .cases import CASES
from .execute import run_case
from .known import KNOWN_DIR, ConformanceError, KnownFailure, load_known
from .progress import Progress, expected_cost
from .result import STATUSES, CaseResult, Report, Target
from .sample import SCALES, Sample

TIERS = ("quick", "full")
DEFAULT_DTYPES = ("float32", "float16", "bfloat16")
SLOW = {("triton", "cpu"): "tiny"}
REDRAW_STRIDE = 7919      # base seed of the n-th redraw: seed + n * REDRAW_STRIDE
LIBRARIES = ("portable-moe", "torch", "triton", "apache-tvm", "onnxruntime", "onnx", "numpy")


def versions() -> dict:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def scale_name(backend: Backend, device: Device, tier: str) -> str:
    declared = getattr(backend, "conformance_scale", {}).get(device.kind)
    slow = declared or SLOW.get((backend.name, device.kind))
    if slow:
        return "tiny-full" if tier == "full" and slow == "tiny" else slow
    return tier


def resolve(backends) -> list[tuple[str, Backend | registry.BackendUnavailable]]:
    """'all'/None -> every registered backend; names and Backend instances as given."""
    if backends is None or backends == "all":
        backends = registry.backend_names()
    if isinstance(backends, str | Backend):
        backends = [backends]
    out = []
    for b in backends:
        if isinstance(b, Backend):
            out.append((b.name, b))
        elif b == "all":
            out += resolve("all")
        else:
            out.append((b, registry.load_for_listing(b)))     # unknown names raise RegistryError listing the known ones
    return out


def parse_dtypes(dtypes: Iterable[str] | None) -> list[DType]:
    """The float dtypes a model computes in (integer dtypes only index: nothing runs in them)."""
    out = []
    for d in dtypes or DEFAULT_DTYPES:
        if d not in {x.value for x in COMPUTE_FLOATS}:
            raise ConformanceError(f"unknown dtype '{d}'; choose from {', '.join(x.value for x in COMPUTE_FLOATS)}")
        out.append(DType(d))
    return out


def select_ops(ops: Iterable[str] | None) -> list[str]:
    if not ops:
        return list(CASES)
    chosen = [name for name in CASES if any(fnmatchcase(name, pat) for pat in ops)]
    if not chosen:
        raise ConformanceError(f"no case matches {list(ops)}; cases: {', '.join(CASES)}")
    return chosen


class Runner:
    def __init__(self, tier: str = "quick", dtypes=None, ops=None, case: str | None = None, seed: int = 0,
                 progress: bool = True, record: bool = True, known_dir=KNOWN_DIR):
        if tier not in TIERS:
            raise ConformanceError(f"unknown tier '{tier}'; choose from {', '.join(TIERS)}")
        self.tier, self.dtypes, self.ops = tier, parse_dtypes(dtypes), select_ops(ops)
        self.case, self.seed, self.progress, self.record, self.known_dir = case, seed, progress, record, known_dir

    def targets(self, backends, device) -> tuple[list[Target], list[tuple[Target, Backend, Device]]]:
        """Every backend x device, and the ones that execute here."""
        listed, runnable = [], []
        for name, backend in resolve(backends):
            if isinstance(backend, registry.BackendUnavailable):
                listed.append(Target(name, "-", {}, f"unavailable: {backend.reason}"))
                continue
            if not backend.executes:
                listed.append(Target(name, "-", {}, f"unavailable: {name} compiles only, never executes"))
                continue
            devices = [resolve_device(device)] if device else discover() + backend.devices()
            for dev in devices:
                reason = backend.availability(dev)
                t = Target(name, dev.id, dev.to_dict(), f"unavailable: {reason}" if reason else "ran", versions())
                listed.append(t)
                if not reason:
                    t.scale = scale_name(backend, dev, self.tier)
                    runnable.append((t, backend, dev))
        return listed, runnable

    def samples(self, scale: str, dtype: DType, seed: int | None = None) -> list[Sample]:
        out = []
        for op in self.ops:
            out += [s for s in CASES[op].generate(dtype, SCALES[scale], self.seed if seed is None else seed)
                    if self.case is None or fnmatchcase(s.name, self.case)]
        return out

    def redraw(self, sample: Sample, scale: str, attempt: int) -> Sample:
        """The same case (op and name) drawn from another base seed."""
        base = self.seed + attempt * REDRAW_STRIDE
        return next(s for s in CASES[sample.op].generate(sample.dtype, SCALES[scale], base) if s.name == sample.name)

    def run(self, backends="all", device: str | Device | None = None) -> Report:
        start = time.perf_counter()
        report = Report(self.tier, [d.value for d in self.dtypes], environment=environment(self.seed))
        report.targets, runnable = self.targets(backends, device)
        work = [(t, b, dev, dtype, self.samples(t.scale, dtype)) for t, b, dev in runnable for dtype in self.dtypes]
        progress = Progress(sum(target_cost(b, dev, samples) for _, b, dev, _, samples in work),
                            sum(len(w[-1]) for w in work), enabled=self.progress)
        known_by = {}
        with single_threaded():
            for target, backend, dev, dtype, samples in work:
                known = known_by.setdefault(backend.name, load_known(backend.name, self.known_dir))
                results = self.run_target(backend, dev, dtype, samples, target.scale, progress)
                apply_known(results, known)
                report.results += results
                self.save_verdict(backend, dev, dtype, results)
                counts = {k: sum(r.status == k for r in results) for k in STATUSES}
                progress.group_done(f"{backend.name} {dev.id} {dtype.value}",
                                    ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "nothing ran")
        for target, backend, _ in runnable:
            target.stale_known_failures = stale(known_by.get(backend.name, []), report.of(target.backend,
                                                                                          target.device))
        report.seconds = time.perf_counter() - start
        return report

    def run_target(self, backend: Backend, dev: Device, dtype: DType, samples: list[Sample], scale: str,
                   progress: Progress) -> list[CaseResult]:
        support = backend.support(dev)
        out, declined_seen, compiled = [], set(), {}
        for s in samples:
            reason = support.reason(s.op, dtype) if s.kind == "op" else None
            if reason and s.op in declined_seen:
                progress.step(cost(backend, dev, s, support), f"{backend.name} {dev.id} {dtype.value} {s.op}")
                continue
            declined_seen |= {s.op} if reason else set()
            r = run_case(backend, dev, s, reason, compiled, lambda n, s=s: self.redraw(s, scale, n))
            if reason:
                r.case = "*"
            r.reproduce = (f"portable-moe conformance --backend {backend.name} --device {dev.id} --dtype "
                           f"{dtype.value} --op '{s.op}' --case '{s.name}' --seed {self.seed} --{self.tier}")
            out.append(r)
            progress.step(cost(backend, dev, s, support), f"{backend.name} {dev.id} {dtype.value} {s.op}")
        return out

    def save_verdict(self, backend: Backend, dev: Device, dtype: DType, results: list[CaseResult]):
        registered = backend.name in registry.backend_names() and type(registry.load(backend.name)) is type(backend)
        if not (self.record and registered and results):
            return
        counts = {s: sum(r.status == s for r in results) for s in STATUSES}
        ok = counts["failed"] == 0 and counts["inconclusive"] == 0 and counts["xfail"] == 0 and counts["passed"] > 0
        if ok and (self.ops != list(CASES) or self.case is not None):
            return      # a filtered run can fail a backend, never prove it
        summary = {f"cases_{k}": v for k, v in counts.items()}   # "passed" itself is the verdict
        results_cache.record(backend.name, dev, dtype.value, ok, {"tier": self.tier, "ops": self.ops, **summary})


def cost(backend: Backend, dev: Device, sample: Sample, support) -> float:
    declined = sample.kind == "op" and support.reason(sample.op, sample.dtype) is not None
    return expected_cost(backend.name, dev.kind, sample.kind, declined)


def target_cost(backend: Backend, dev: Device, samples: list[Sample]) -> float:
    support = backend.support(dev)
    return sum(cost(backend, dev, s, support) for s in samples)


@contextmanager
def single_threaded():
    """Conformance tensors are tiny: torch's intra-op threads only spin and wait on each other (measured:
    4-6x the CPU time of one thread on 2 cores, more under load), so the suite runs on one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def apply_known(results: list[CaseResult], known: list[KnownFailure]):
    for r in results:
        if r.status != "failed":
            continue
        hit = next((k for k in known if k.matches(r.op, r.dtype, r.device, r.case, r.checks)), None)
        if hit:
            r.status, r.reason = "xfail", hit.reason


def stale(known: list[KnownFailure], results: list[CaseResult]) -> list[dict]:
    """Entries that matched no failure of this run (ran cases only): candidates for removal."""
    hit = {r.reason for r in results if r.status == "xfail"}
    return [k.to_dict() for k in known if k.reason not in hit]


def environment(seed: int) -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(), "seed": seed,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv}


def run_suite(backends="all", device=None, dtypes=None, tier="quick", ops=None, case=None, seed=0, progress=True,
              record=True, known_dir=KNOWN_DIR) -> Report:
    return Runner(tier, dtypes, ops, case, seed, progress, record, known_dir).run(backends, device)


def run_quick(backends="all", device=None, dtypes=None, progress=False) -> Report:
    """The demo's entry point: the quick tier, results recorded; print report.summary_lines()."""
    return run_suite(backends, device, dtypes, "quick", progress=progress)
