"""Progress of a conformance run, with an ETA weighted by what each case is expected to cost (a model
case on Triton's CPU interpreter costs a thousand times a single op on the reference). On a terminal
one line is redrawn in place; otherwise (a file, a CI log) one plain line per backend x device x dtype
group, written when the group is done.

The costs are seconds per case measured on a 2-core machine (BENCHMARKS.md, conformance); a
backend not listed counts as the reference. The ETA divides the expected cost still to run by the
rate observed so far, so it corrects itself when this machine is faster or slower."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

# seconds per case by (backend, device kind) and sample kind, measured here (2 cores, load ~2)
COST = {("reference", "cpu"): {"op": 0.003, "layer": 0.03, "model": 0.1},
        ("onnxruntime", "cpu"): {"op": 0.006, "layer": 0.04, "model": 0.3},
        ("tvm", "cpu"): {"op": 0.027, "layer": 0.07, "model": 0.2},
        ("tvm", "opencl"): {"op": 0.023, "layer": 0.03, "model": 0.01},
        ("triton", "cpu"): {"op": 0.15, "layer": 2.6, "model": 6.7}}
DECLINED = 0.01       # a declined op is checked once, then skipped


def expected_cost(backend: str, device_kind: str, kind: str, declined: bool = False) -> float:
    table = COST.get((backend, device_kind), COST[("reference", "cpu")])
    return table.get(kind, table["op"]) * (DECLINED if declined else 1.0)


def clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class Progress:
    total_cost: float
    total_cases: int
    enabled: bool = True
    stream: object = None

    def __post_init__(self):
        self.stream = self.stream or sys.stderr
        self.live = self.enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.cost_done, self.cases_done = 0.0, 0
        self.group_start, self.group_cases = self.start, 0

    def eta(self) -> str:
        if self.cost_done <= 0:
            return "?"
        elapsed = time.perf_counter() - self.start
        return clock(elapsed / self.cost_done * (self.total_cost - self.cost_done))

    def step(self, cost: float, label: str):
        self.cost_done += cost
        self.cases_done += 1
        self.group_cases += 1
        if self.live:
            pct = 100 * self.cost_done / self.total_cost if self.total_cost else 100
            line = (f"{pct:3.0f}% {self.cases_done}/{self.total_cases} cases "
                    f"[{clock(time.perf_counter() - self.start)} elapsed, ETA {self.eta()}] {label}")
            self.stream.write("\r" + line[:150].ljust(150))
            self.stream.flush()

    def group_done(self, label: str, summary: str):
        if self.enabled:
            took = time.perf_counter() - self.group_start
            line = (f"{label}: {self.group_cases} sample(s) in {took:.1f} s, {summary}; "
                    f"{self.cases_done}/{self.total_cases} done, ETA {self.eta()}")
            self.stream.write(("\r" + line.ljust(150) + "\n") if self.live else line + "\n")
            self.stream.flush()
        self.group_start, self.group_cases = time.perf_counter(), 0
