"""Export-time fusion: grouped_matmul -> swiglu -> grouped_matmul over the same offsets becomes one
per-expert chain (gate Gemm, up Gemm, silu*up, down Gemm) and a single Concat, which saves the
[R, 2F] Concat, its Split and one Slice per expert. Same arithmetic, float32/float64 only: in low
precision the IR rounds to x's dtype between the ops, which the unfused lowering keeps."""

from __future__ import annotations

from dataclasses import dataclass

from ..graph import Graph, Node
from ..types import DType


@dataclass(frozen=True)
class ExpertFFN:
    gate_up: Node
    swiglu: Node
    down: Node


def uses(graph: Graph) -> dict[str, list[Node]]:
    table: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            if i is not None:
                table.setdefault(i, []).append(n)
    return table


def only_use(table, graph: Graph, value: str, op: str) -> Node | None:
    users = table.get(value, [])
    if len(users) != 1 or users[0].op != op or value in graph.outputs:
        return None
    return users[0]


def expert_ffns(graph: Graph) -> dict[str, ExpertFFN]:
    """First grouped_matmul's node name -> the chain it starts."""
    table, found = uses(graph), {}
    for n in graph.nodes:
        if n.op != "grouped_matmul" or n.outputs[0].type.dtype not in (DType.float32, DType.float64):
            continue
        act = only_use(table, graph, n.outputs[0].name, "swiglu")
        down = act and only_use(table, graph, act.outputs[0].name, "grouped_matmul")
        if down and down.inputs[0] == act.outputs[0].name and down.inputs[2] == n.inputs[2]:
            found[n.name] = ExpertFFN(n, act, down)
    return found
