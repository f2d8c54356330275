"""The graph: named, typed values; nodes in topological order; parameters kept outside as names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .ops import normalize_attrs, schema
from .types import TensorType


@dataclass(frozen=True)
class Value:
    name: str
    type: TensorType


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str | None]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    """inputs are fed per call, params are weights (bound by name), outputs name values."""

    name: str
    inputs: list[Value] = field(default_factory=list)
    params: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def values(self) -> dict[str, Value]:
        table = {v.name: v for v in self.inputs + self.params}
        for node in self.nodes:
            table.update((v.name, v) for v in node.outputs)
        return table

    def types(self) -> dict[str, TensorType]:
        return {name: v.type for name, v in self.values().items()}

    def producers(self) -> dict[str, Node]:
        return {v.name: n for n in self.nodes for v in n.outputs}

    def ops(self) -> set[str]:
        return {n.op for n in self.nodes}

    def param_names(self) -> list[str]:
        return [p.name for p in self.params]


class GraphBuilder:
    """Builds a graph op by op, inferring output types from the schemas."""

    def __init__(self, name: str):
        self.graph = Graph(name)
        self._types: dict[str, TensorType] = {}
        self._count = 0

    def input(self, name: str, type: TensorType) -> str:
        self.graph.inputs.append(Value(name, type))
        self._types[name] = type
        return name

    def param(self, name: str, type: TensorType) -> str:
        self.graph.params.append(Value(name, type))
        self._types[name] = type
        return name

    def op(self, op: str, *inputs: str | None, name: str | None = None, **attrs) -> list[str]:
        s = schema(op)
        attrs = normalize_attrs(s, attrs)
        name = name or f"{op}_{self._count}"
        self._count += 1
        types = [self._types[i] if i is not None else None for i in inputs]
        out_types = s.infer(*types, **attrs)
        outs = [Value(name if len(s.outputs) == 1 else f"{name}.{o}", t) for o, t in zip(s.outputs, out_types)]
        self.graph.nodes.append(Node(name, op, list(inputs), outs, attrs))
        self._types.update((v.name, v.type) for v in outs)
        return [v.name for v in outs]

    def op1(self, op: str, *inputs: str | None, name: str | None = None, **attrs) -> str:
        return self.op(op, *inputs, name=name, **attrs)[0]

    def type_of(self, name: str) -> TensorType:
        return self._types[name]

    def finish(self, *outputs: str) -> Graph:
        self.graph.outputs = list(outputs)
        return self.graph
