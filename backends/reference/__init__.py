"""The reference backend: torch eager, any torch device, any dtype, with autograd. It is the
executable specification of the IR and the numerical oracle (run it in float64)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...ir import ALL_OPS, COMPUTE_FLOATS, Graph
from ...ir.meanings import OPS
from ..base import Backend, BackendOptions, Executable, Support
from ..devices import Device

TORCH_DTYPES = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float8_e4m3fn": torch.float8_e4m3fn, "float8_e4m3fnuz": torch.float8_e4m3fnuz,
    "int64": torch.int64, "int32": torch.int32,
}


def run_graph(graph: Graph, inputs: Mapping, params: Mapping, env: dict | None = None) -> list:
    """Interprets the graph node by node; `env` (if given) receives every intermediate value."""
    env = {} if env is None else env
    env.update(inputs)
    env.update(params)
    for node in graph.nodes:
        args = [None if i is None else env[i] for i in node.inputs]
        result = OPS[node.op](*args, **node.attrs)
        results = result if isinstance(result, tuple) else (result,)
        env.update((v.name, r) for v, r in zip(node.outputs, results))
    return [env[o] for o in graph.outputs]


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
                       {"float8_e4m3fn": "fp8 compute is not defined yet; cast to bfloat16",
                        "float8_e4m3fnuz": "fp8 compute is not defined yet; cast to bfloat16"})

    def compile(self, graph: Graph, device: Device, options: BackendOptions) -> Executable:
        self.require_supported(graph, device)
        return ReferenceExecutable(graph, device)
