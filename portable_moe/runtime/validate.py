"""Shadow validation: a sampled fraction of calls re-runs each segment on the float64 reference and
flags any node whose output is off by more than the dtype's tolerance, saving a reproducer."""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..backends.cache import safe_name
from ..ir import PortableMoeError, to_json
from ..ir.meanings import run_graph
from .tolerance import TOLERANCES, excess


class ValidationError(PortableMoeError):
    """A backend's output disagreed with the reference beyond the tolerance on live traffic."""


@dataclass
class Finding:
    node: str
    output: str
    backend: str
    worst: float          # max error / allowed error
    reproducer: str


@dataclass
class Validator:
    fraction: float
    raise_on_failure: bool
    repro_dir: Path
    seed: int = 0
    calls: int = 0
    checked: int = 0
    findings: list[Finding] = field(default_factory=list)

    def __post_init__(self):
        self.rng = random.Random(self.seed)

    def maybe_check(self, model, env: dict, params: dict):
        self.calls += 1
        if self.fraction <= 0 or self.rng.random() >= self.fraction:
            return
        self.checked += 1
        producers = model.graph.producers()
        for segment, _ in model.segments:
            if segment.backend == "reference":
                continue
            self.check_segment(segment, env, params, producers)

    def check_segment(self, segment, env, params, producers):
        g = segment.graph
        ins = {v.name: env[v.name].detach() for v in g.inputs}
        ps = {v.name: params[v.name].detach() for v in g.params}
        as64 = {k: v.double() if v.is_floating_point() else v for k, v in (ins | ps).items()}
        with torch.no_grad():
            want = run_graph(g, {}, dict(as64))
        for name, ref in zip(g.outputs, want):
            got = env[name].detach()
            if not got.is_floating_point():
                continue
            worst, _ = excess(got, ref, TOLERANCES[got.dtype])
            if worst > 1:
                self.report(Finding(producers[name].name, name, segment.backend, worst,
                                    self.save(g, ins | ps)))

    def save(self, graph, tensors: dict) -> str:
        self.repro_dir.mkdir(parents=True, exist_ok=True)
        stem = self.repro_dir / f"{safe_name(graph.name)}-{time.strftime('%Y%m%d-%H%M%S')}-{self.checked}"
        Path(f"{stem}.json").write_text(to_json(graph))
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, f"{stem}.safetensors")
        return str(stem)

    def report(self, f: Finding):
        self.findings.append(f)
        message = (f"shadow validation: node '{f.node}' on {f.backend} is off by {f.worst:.3g}x the tolerance "
                   f"(output {f.output}); reproducer: {f.reproducer}.json/.safetensors")
        if self.raise_on_failure:
            raise ValidationError(message)
        warnings.warn(message, stacklevel=3)
