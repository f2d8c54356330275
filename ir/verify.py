"""The verifier: every rule a well-formed graph obeys, each failure naming node, op and problem."""

from __future__ import annotations

from .errors import IRError
from .graph import Graph, Node
from .ops import normalize_attrs, schema


def verify(graph: Graph) -> Graph:
    """Raises IRError on the first broken rule; returns the graph so calls can chain."""
    check_names(graph)
    check_order(graph)
    types = {v.name: v.type for v in graph.inputs + graph.params}
    for node in graph.nodes:
        check_node(node, types)
        types.update((v.name, v.type) for v in node.outputs)
    for out in graph.outputs:
        if out not in types:
            raise IRError(f"graph output '{out}' is not a value of the graph")
    if not graph.outputs:
        raise IRError("graph has no outputs")
    return graph


def check_names(graph: Graph):
    seen: dict[str, str] = {}
    for where, values in (("input", graph.inputs), ("param", graph.params)):
        for v in values:
            if v.name in seen:
                raise IRError(f"{where} '{v.name}' is defined twice (also as {seen[v.name]})")
            seen[v.name] = where
    nodes = set()
    for node in graph.nodes:
        if node.name in nodes:
            raise IRError("node name is used twice", node=node.name, op=node.op)
        nodes.add(node.name)
        for v in node.outputs:
            if v.name in seen:
                raise IRError(f"output '{v.name}' is already defined (as {seen[v.name]})", node.name, node.op)
            seen[v.name] = f"output of node '{node.name}'"


def check_order(graph: Graph):
    """Nodes must come in topological order; a use before definition is a cycle or a dangling value."""
    defined = {v.name for v in graph.inputs + graph.params}
    producers = graph.producers()
    for node in graph.nodes:
        for i in node.inputs:
            if i is None or i in defined:
                continue
            if i not in producers:
                raise IRError(f"input '{i}' is not defined anywhere (dangling value)", node.name, node.op)
            cycle = find_cycle(graph, node)
            if cycle:
                raise IRError(f"cycle through nodes {shorten(cycle)}", node.name, node.op)
            raise IRError(f"input '{i}' is used before node '{producers[i].name}' defines it", node.name, node.op)
        defined.update(v.name for v in node.outputs)


def shorten(cycle: list[str], keep: int = 6) -> str:
    """A cycle's node names for one line: all of a short one, the ends of a long one."""
    names = [n[:60] for n in cycle]
    if len(names) <= 2 * keep:
        return " -> ".join(names)
    return f"{' -> '.join(names[:keep])} -> ... ({len(names) - 2 * keep} more) -> {' -> '.join(names[-keep:])}"


def find_cycle(graph: Graph, start: Node) -> list[str] | None:
    producers = graph.producers()
    path, stack = [], [(start, iter(start.inputs))]
    on_path = {start.name}
    path.append(start.name)
    while stack:
        node, it = stack[-1]
        nxt = next((producers[i] for i in it if i in producers), None)
        if nxt is None:
            stack.pop()
            on_path.discard(path.pop())
            continue
        if nxt.name == start.name:
            return path + [start.name]
        if nxt.name not in on_path and len(path) <= len(graph.nodes):
            on_path.add(nxt.name)
            path.append(nxt.name)
            stack.append((nxt, iter(nxt.inputs)))
    return None


def check_node(node: Node, types: dict):
    try:
        s = schema(node.op)
        if len(node.inputs) > len(s.inputs) or len(node.inputs) < s.required_inputs:
            raise IRError(f"takes {s.required_inputs}..{len(s.inputs)} inputs ({', '.join(s.inputs)}), "
                          f"got {len(node.inputs)}")
        for name, value in zip(s.inputs, node.inputs):
            if value is None and name not in s.optional:
                raise IRError(f"required input '{name}' is missing")
        if len(node.outputs) != len(s.outputs):
            raise IRError(f"has {len(s.outputs)} outputs ({', '.join(s.outputs)}), got {len(node.outputs)}")
        attrs = normalize_attrs(s, node.attrs)
        ins = [types[i] if i is not None else None for i in node.inputs]
        expected = s.infer(*ins, **attrs)
        for v, t in zip(node.outputs, expected):
            if v.type != t:
                raise IRError(f"output '{v.name}' is declared {v.type} but the type rule gives {t}")
    except IRError as e:
        if e.node:
            raise
        raise IRError(e.problem, node=node.name, op=node.op) from None
