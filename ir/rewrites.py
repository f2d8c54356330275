"""Graph rewrites that keep the meaning: each finds a pattern of nodes that a backend (or the ONNX
exporter) may run as one fused piece. Written once here; every backend and the exporter call it."""

from __future__ import annotations

from dataclasses import dataclass

from .graph import Graph, Node
from .types import DType


def users(graph: Graph) -> dict[str, list[Node]]:
    """value name -> the nodes that read it."""
    table: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            if i is not None:
                table.setdefault(i, []).append(n)
    return table


def only_use(table: dict[str, list[Node]], graph: Graph, value: str, op: str) -> Node | None:
    """The node that reads `value` when it is the only reader, runs `op`, and value is no graph output."""
    readers = table.get(value, [])
    if len(readers) != 1 or readers[0].op != op or value in graph.outputs:
        return None
    return readers[0]


def swiglu_epilogues(graph: Graph) -> dict[str, Node]:
    """grouped_matmul node name -> the swiglu that is the only consumer of its output (one kernel with a
    SwiGLU epilogue computes both)."""
    table = users(graph)
    found = {}
    for n in graph.nodes:
        if n.op == "grouped_matmul" and (act := only_use(table, graph, n.outputs[0].name, "swiglu")):
            found[n.name] = act
    return found


@dataclass(frozen=True)
class ExpertFFN:
    gate_up: Node
    swiglu: Node
    down: Node


def expert_ffns(graph: Graph) -> dict[str, ExpertFFN]:
    """grouped_matmul -> swiglu -> grouped_matmul over the same offsets, float32/float64 only (in low
    precision the IR rounds to x's dtype between the ops): first node's name -> the chain it starts."""
    table, found = users(graph), {}
    for name, act in swiglu_epilogues(graph).items():
        first = next(n for n in graph.nodes if n.name == name)
        if first.outputs[0].type.dtype not in (DType.float32, DType.float64):
            continue
        down = only_use(table, graph, act.outputs[0].name, "grouped_matmul")
        if down and down.inputs[0] == act.outputs[0].name and down.inputs[2] == first.inputs[2]:
            found[name] = ExpertFFN(first, act, down)
    return found


@dataclass(frozen=True)
class MoeChain:
    dispatch: Node
    gate_up: Node
    swiglu: Node
    down: Node
    combine: Node

    @property
    def nodes(self) -> list[Node]:
        return [self.dispatch, self.gate_up, self.swiglu, self.down, self.combine]


def moe_chains(graph: Graph) -> dict[str, MoeChain]:
    """dispatch -> grouped_matmul -> swiglu -> grouped_matmul -> combine whose rows, offsets, order and
    intermediates nothing else reads: dispatch node name -> the chain (one fused MoE FFN computes it: the
    gate_up GEMM gathers token rows, the down GEMM weights its rows, combine becomes a sum)."""
    table, found = users(graph), {}
    for d in (n for n in graph.nodes if n.op == "dispatch"):
        rows, offsets, order = (v.name for v in d.outputs)
        gate_up = only_use(table, graph, rows, "grouped_matmul")
        act = gate_up and only_use(table, graph, gate_up.outputs[0].name, "swiglu")
        down = act and only_use(table, graph, act.outputs[0].name, "grouped_matmul")
        combine = down and only_use(table, graph, down.outputs[0].name, "combine")
        if not combine or offsets in graph.outputs or only_use(table, graph, order, "combine") is not combine:
            continue
        wired = gate_up.inputs[0] == rows and down.inputs[0] == act.outputs[0].name
        if wired and {n.name for n in table.get(offsets, [])} == {gate_up.name, down.name} \
                and list(combine.inputs[:2]) == [down.outputs[0].name, order]:
            found[d.name] = MoeChain(d, gate_up, act, down, combine)
    return found
