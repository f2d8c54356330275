"""A readable text form of a graph (for people; the JSON form is for machines)."""

from __future__ import annotations

from .graph import Graph


def format_attr(value) -> str:
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def to_text(graph: Graph) -> str:
    lines = [f"graph {graph.name}("]
    lines += [f"    %{v.name}: {v.type}," for v in graph.inputs]
    lines.append(") params(")
    lines += [f"    @{v.name}: {v.type}," for v in graph.params]
    lines.append(") {")
    params = set(graph.param_names())
    for node in graph.nodes:
        outs = ", ".join(f"%{v.name}" for v in node.outputs)
        args = ", ".join("_" if i is None else (f"@{i}" if i in params else f"%{i}") for i in node.inputs)
        attrs = ", ".join(f"{k}={format_attr(v)}" for k, v in node.attrs.items())
        types = ", ".join(str(v.type) for v in node.outputs)
        call = f"{node.op}({args}{'; ' + attrs if attrs else ''})"
        lines.append(f"  {outs} = {call}  : {types}")
    lines.append(f"  return {', '.join('%' + o for o in graph.outputs)}")
    lines.append("}")
    return "\n".join(lines)
