"""The reference backend: torch eager, any torch device, any dtype, with autograd. It runs the op
meanings of the IR (ir/meanings.py), so it is the executable specification and the numerical oracle
(run it in float64)."""

from __future__ import annotations

from collections.abc import Mapping

from ...ir import ALL_OPS, COMPUTE_FLOATS, Graph
from ...ir.meanings import run_graph
from ..base import Backend, BackendOptions, Executable, Support
from ..devices import Device

FP8_DECLINED = "fp8 compute is not defined yet; cast to bfloat16"


class ReferenceExecutable(Executable):
    differentiable = True

    def run(self, inputs: Mapping, params: Mapping) -> list:
        return run_graph(self.graph, inputs, params)


class ReferenceBackend(Backend):
    name = "reference"

    def availability(self, device: Device) -> str | None:
        if device.kind == "opencl":
            return "reference: runs on torch devices only, not on OpenCL platforms"
        return None

    def support(self, device: Device) -> Support:
        return Support({op: frozenset(COMPUTE_FLOATS) for op in ALL_OPS},
                       {"float8_e4m3fn": FP8_DECLINED, "float8_e4m3fnuz": FP8_DECLINED})

    def compile(self, graph: Graph, device: Device, options: BackendOptions) -> Executable:
        self.require_supported(graph, device)
        return ReferenceExecutable(graph, device)
