"""What a conformance run found: one CaseResult per sample, one Target per backend x device (with
a verdict 'unavailable: reason' when the backend cannot load or run there), gathered in a Report."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

STATUSES = ("passed", "failed", "inconclusive", "xfail", "declined")


@dataclass
class CaseResult:
    backend: str
    device: str
    dtype: str
    op: str
    case: str
    seed: int
    status: str                                   # one of STATUSES; xfail = a known failure
    failures: list[tuple[str, str]] = field(default_factory=list)   # (check, message)
    errors: dict[str, dict] = field(default_factory=dict)
    excluded_tokens: int = 0
    compared: int = 0                             # output elements compared by value
    compared_grads: int = 0                       # gradient elements compared
    draws: int = 1                                # samples drawn: one that compared nothing is drawn again
    notes: list[str] = field(default_factory=list)
    reason: str = ""                              # why declined, or the known failure's reason
    seconds: float = 0.0
    reproduce: str = ""

    @property
    def checks(self) -> list[str]:
        return sorted({c for c, _ in self.failures})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["failures"] = [{"check": c, "message": m} for c, m in self.failures]
        return d


@dataclass
class Target:
    backend: str
    device: str
    device_info: dict
    verdict: str                     # "ran", or "unavailable: <reason>"
    versions: dict = field(default_factory=dict)
    scale: str = ""
    stale_known_failures: list[dict] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        return self.verdict == "ran"


@dataclass
class Report:
    tier: str
    dtypes: list[str]
    targets: list[Target] = field(default_factory=list)
    results: list[CaseResult] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    seconds: float = 0.0

    def of(self, backend: str, device: str) -> list[CaseResult]:
        return [r for r in self.results if r.backend == backend and r.device == device]

    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "failed"]

    def inconclusive(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "inconclusive"]

    @property
    def passed(self) -> bool:
        """True when at least one target ran and every executed case passed (known failures do not count;
        an inconclusive case, one that compared nothing, does)."""
        return any(t.ran for t in self.targets) and not self.failures() and not self.inconclusive()

    def counts(self, backend: str, device: str, dtype: str | None = None) -> Counter:
        return Counter(r.status for r in self.of(backend, device) if dtype is None or r.dtype == dtype)

    def summary_lines(self) -> list[str]:
        """One line per backend x device x dtype: pass/fail counts; unavailable targets with the reason."""
        lines = []
        for t in self.targets:
            if not t.ran:
                lines.append(f"{t.backend:12} {t.device:10} {t.verdict}")
                continue
            for dtype in self.dtypes:
                c = self.counts(t.backend, t.device, dtype)
                if not c:
                    continue
                verdict = "FAIL" if c["failed"] or c["inconclusive"] else "ok"
                lines.append(f"{t.backend:12} {t.device:10} {dtype:9} {verdict:4} passed {c['passed']:4}  "
                             f"failed {c['failed']:3}  inconclusive {c['inconclusive']:2}  known {c['xfail']:3}  "
                             f"declined {c['declined']:3}")
        bad, unsure = self.failures(), self.inconclusive()
        lines.append(f"{'PASSED' if self.passed else 'FAILED'}: {len(self.results)} case(s), {len(bad)} failed, "
                     f"{len(unsure)} inconclusive, {self.seconds:.1f} s")
        return lines

    def failure_lines(self, limit: int = 20) -> list[str]:
        out = []
        for r in self.failures()[:limit]:
            out.append(f"FAIL {r.backend} {r.device} {r.dtype} {r.op}/{r.case} seed={r.seed}")
            out += [f"     [{c}] {m}" for c, m in r.failures[:3]]
            out.append(f"     reproduce: {r.reproduce}")
        for r in self.inconclusive()[:limit]:
            out.append(f"INCONCLUSIVE {r.backend} {r.device} {r.dtype} {r.op}/{r.case}: {r.reason}")
            out.append(f"     reproduce: {r.reproduce}")
        return out

    def to_dict(self) -> dict:
        return {"format": "portable_moe.conformance-report", "version": 1, "tier": self.tier, "dtypes": self.dtypes,
                "passed": self.passed, "seconds": self.seconds, "environment": self.environment,
                "targets": [asdict(t) for t in self.targets], "results": [r.to_dict() for r in self.results]}
