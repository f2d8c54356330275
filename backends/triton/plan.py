"""Run-time planning: which launches a graph's nodes become. A dispatch -> grouped_matmul -> swiglu ->
grouped_matmul -> combine chain whose intermediates nothing else reads runs as one fused MoE FFN (launch.moe_ffn)
in inference; a grouped_matmul whose only consumer is a swiglu runs with the SwiGLU epilogue; the rest op by op.
Tile configs come per launched variant and bucket of rows per expert (tuning.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ...ir import Graph, Node


@dataclass(frozen=True)
class MoeChain:
    dispatch: Node
    gate_up: Node
    swiglu: Node
    down: Node
    combine: Node

    @property
    def names(self) -> set[str]:
        return {n.name for n in (self.dispatch, self.gate_up, self.swiglu, self.down, self.combine)}


def users(graph: Graph) -> dict[str, list[Node]]:
    out: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for i in node.inputs:
            if i is not None:
                out.setdefault(i, []).append(node)
    return out


def only_user(used: dict, graph: Graph, value: str, op: str) -> Node | None:
    found = used.get(value, [])
    if len(found) == 1 and found[0].op == op and value not in graph.outputs:
        return found[0]
    return None


def fusable_swiglu(graph: Graph) -> dict[str, Node]:
    """grouped_matmul node name -> the swiglu that is the only consumer of its output."""
    used = users(graph)
    return {n.name: s for n in graph.nodes if n.op == "grouped_matmul"
            and (s := only_user(used, graph, n.outputs[0].name, "swiglu")) is not None}


def moe_chains(graph: Graph) -> dict[str, MoeChain]:
    """dispatch node name -> the chain it starts, for each chain that can run fused."""
    used, found = users(graph), {}
    for d in (n for n in graph.nodes if n.op == "dispatch"):
        rows, offsets, order = (v.name for v in d.outputs)
        gate_up = only_user(used, graph, rows, "grouped_matmul")
        swiglu = gate_up and only_user(used, graph, gate_up.outputs[0].name, "swiglu")
        down = swiglu and only_user(used, graph, swiglu.outputs[0].name, "grouped_matmul")
        combine = down and only_user(used, graph, down.outputs[0].name, "combine")
        if not combine or offsets in graph.outputs or only_user(used, graph, order, "combine") is not combine:
            continue
        wired = gate_up.inputs[0] == rows and down.inputs[0] == swiglu.outputs[0].name
        if wired and {n.name for n in used.get(offsets, [])} == {gate_up.name, down.name} \
                and list(combine.inputs[:2]) == [down.outputs[0].name, order]:
            found[d.name] = MoeChain(d, gate_up, swiglu, down, combine)
    return found
