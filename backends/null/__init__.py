"""The null backend: compiles and lowers every graph, executes none. Compilation paths are
testable on any machine with it."""

from __future__ import annotations

from pathlib import Path

from ...ir import ALL_OPS, DType, Graph, to_json
from ..base import Backend, BackendError, BackendOptions, Executable, Support, write_manifest
from ..devices import Device


class NullExecutable(Executable):
    def run(self, inputs, params) -> list:
        raise BackendError("the null backend compiles but never executes; pick another backend to run")


class NullBackend(Backend):
    name = "null"
    executes = False
    targets = ("null",)

    def availability(self, device: Device) -> str | None:
        return None

    def support(self, device: Device) -> Support:
        return Support({op: frozenset(d for d in DType if d.is_float) for op in ALL_OPS})

    def compile(self, graph: Graph, device: Device, options: BackendOptions) -> Executable:
        self.require_supported(graph, device)
        return NullExecutable(graph, device)

    def lower(self, graph: Graph, target: str, out_dir: Path, options: BackendOptions) -> dict:
        self.check_target(target)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "graph.json").write_text(to_json(graph))
        kernels = [{"kernel": n.name, "op": n.op, "artifacts": {}} for n in graph.nodes]
        kernels.append({"kernel": "graph", "op": "graph", "artifacts": {"ir": "graph.json"}})
        return write_manifest(out_dir, self.name, target, graph, kernels, note="no code generated")
