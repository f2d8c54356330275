"""Splits a graph over backends: each node goes to a backend that supports it on the device, with
as few cross-backend boundaries as possible, then the best-ranked backend."""

from __future__ import annotations

from dataclasses import dataclass

from ..backends.base import Backend, node_dtype
from ..backends.devices import Device
from ..ir import Graph, IRError, Node, verify


@dataclass
class Segment:
    backend: str
    graph: Graph               # the sub-graph this backend runs
    reasons: dict[str, str]    # node -> why it is not on the preferred backend


def capable(graph: Graph, device: Device, ranked: list[tuple[str, Backend]]) -> list[list[int]]:
    """For each node, the indices (into ranked) of the backends that support it."""
    types = graph.types()
    supports = [b.support(device) for _, b in ranked]
    table = []
    for node in graph.nodes:
        dtype = node_dtype(node, types)
        ok = [i for i, s in enumerate(supports) if s.reason(node.op, dtype) is None]
        if not ok:
            raise IRError(f"no backend on {device.id} supports it in {dtype.value} "
                          f"(tried {', '.join(n for n, _ in ranked)})", node.name, node.op)
        table.append(ok)
    return table


def assign(table: list[list[int]]) -> list[int]:
    """Dynamic programme over nodes in order. Every node the chosen backend (rank 0) supports runs on
    it; the rest go where they make the fewest cross-backend switches, then to the best-ranked backend."""
    def step_cost(options, b):
        return (int(0 in options and b != 0), b)

    cost = [{b: (step_cost(table[0], b)[0], 0, b) for b in table[0]}] if table else []
    back: list[dict[int, int]] = [{}]
    for options in table[1:]:
        prev, row, links = cost[-1], {}, {}
        for b in options:
            best = min(prev, key=lambda p: (prev[p][0], prev[p][1] + (p != b), prev[p][2]))
            violations, switches, ranks = prev[best]
            row[b] = (violations + step_cost(options, b)[0], switches + (best != b), ranks + b)
            links[b] = best
        cost.append(row)
        back.append(links)
    if not cost:
        return []
    b = min(cost[-1], key=cost[-1].get)
    out = [b]
    for links in reversed(back[1:]):
        b = links[b]
        out.append(b)
    return out[::-1]


def subgraph(graph: Graph, nodes: list[Node], name: str, needed: set[str]) -> Graph:
    values = graph.values()
    params = set(graph.param_names())
    produced = {v.name for n in nodes for v in n.outputs}
    used: list[str] = []
    for n in nodes:
        used += [i for i in n.inputs if i is not None and i not in produced and i not in used]
    outputs = [v.name for n in nodes for v in n.outputs if v.name in needed] or [nodes[-1].outputs[0].name]
    return verify(Graph(name, [values[u] for u in used if u not in params], [values[u] for u in used if u in params],
                        list(nodes), outputs))


def partition(graph: Graph, device: Device, ranked: list[tuple[str, Backend]]) -> list[Segment]:
    table = capable(graph, device, ranked)
    choice = assign(table)
    runs: list[tuple[int, list[Node]]] = []
    for node, b in zip(graph.nodes, choice):
        if runs and runs[-1][0] == b:
            runs[-1][1].append(node)
        else:
            runs.append((b, [node]))
    segments = []
    for i, (b, nodes) in enumerate(runs):
        later = {x for _, ns in runs[i + 1:] for n in ns for x in n.inputs if x is not None} | set(graph.outputs)
        name, backend = ranked[b]
        reasons = {}
        if b != 0:
            best = ranked[0][1]
            for n in nodes:
                why = best.unsupported(subgraph(graph, [n], "probe", {v.name for v in n.outputs}), device)
                reasons[n.name] = why[0][1] if why else f"kept on {name} to avoid a boundary"
        segments.append(Segment(name, subgraph(graph, nodes, f"{graph.name}.{i}.{name}", later), reasons))
    return segments
