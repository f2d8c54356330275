"""A read-only view of an ONNX graph for the importer: constants, producers, consumers, attributes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


class OnnxView:
    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.nodes = list(graph.node)
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for n in self.nodes:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in graph.output}

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name)

    def users(self, value: str, op_type: str | None = None) -> list[onnx.NodeProto]:
        return [n for n in self.consumers.get(value, []) if op_type is None or n.op_type == op_type]

    def made_by(self, value: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(value)
        return node if node is not None and node.op_type == op_type else None

    def upstream(self, values, stop: set[str]) -> list[onnx.NodeProto]:
        """The nodes the values depend on, not crossing the `stop` values."""
        seen, todo, found = set(), list(values), {}
        while todo:
            v = todo.pop()
            if v in seen or v in stop:
                continue
            seen.add(v)
            node = self.producer.get(v)
            if node is not None and node.name not in found:
                found[node.name] = node
                todo.extend(i for i in node.input if i)
        return [n for n in self.nodes if n.name in found]


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def ensure_names(graph: onnx.GraphProto):
    """Gives every node a unique name (exporters may leave them empty)."""
    seen = set()
    for i, n in enumerate(graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)
