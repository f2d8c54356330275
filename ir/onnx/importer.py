"""ONNX -> IR graph + parameters (numpy).

Our own files carry their IR as metadata and come back exactly, when the ONNX nodes are unchanged.
Other files are read op by op: standard dense ops map to IR ops (Gemm/MatMul with a constant weight
-> linear, Add, Mul, Sigmoid, Softmax, Gelu, Gather on a constant table -> embedding), and a
Mixtral-style expert loop (moe_pattern) becomes router + dispatch + grouped_matmul + swiglu + combine,
kept only if onnxruntime says it computes the same. Anything else is an IRError naming the ops."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from ..errors import IRError
from ..graph import Graph, GraphBuilder
from ..serialize import from_json
from ..types import DType, TensorType
from ..verify import verify
from .builder import IR_DTYPES
from .equivalence import mismatch
from .export import IR_METADATA_KEY, NODES_KEY, nodes_digest
from .moe_pattern import MoEMatch, find_moe
from .onnx_graph import OnnxView, attrs, ensure_names

DENSE_OPS = ("Add", "Gather", "Gelu", "Gemm", "Identity", "MatMul", "Mul", "Sigmoid", "Softmax")


def load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model))
    except Exception as e:  # noqa: BLE001 - protobuf and OS errors alike mean "not a readable ONNX file"
        raise IRError(f"cannot read ONNX file {model}: {e}") from None


def import_model(model: onnx.ModelProto | str | Path, *, use_metadata: bool = True,
                 check: bool = True) -> tuple[Graph, dict[str, np.ndarray]]:
    """The IR graph and its parameters. `check` runs recognised MoE layers against the original."""
    model = load(model)
    if use_metadata and (found := from_metadata(model)) is not None:
        return found
    graph, params, matches = read_ops(model)
    if check and matches and (problem := mismatch(model, graph, params)):
        raise IRError(f"recognised {len(matches)} MoE layer(s) but the IR does not compute the same "
                      f"({problem}); import refused rather than guessed")
    return graph, params


def from_metadata(model: onnx.ModelProto) -> tuple[Graph, dict[str, np.ndarray]] | None:
    props = {p.key: p.value for p in model.metadata_props}
    if IR_METADATA_KEY not in props or props.get(NODES_KEY) != nodes_digest(model.graph):
        return None
    graph = from_json(props[IR_METADATA_KEY])
    weights = {t.name: t for t in model.graph.initializer}
    params = {}
    for p in graph.params:
        if p.name in weights:
            params[p.name] = onnx.numpy_helper.to_array(weights[p.name])
            if tuple(params[p.name].shape) != tuple(p.type.shape):
                return None
    return graph, params


class Reader:
    def __init__(self, model: onnx.ModelProto):
        ensure_names(model.graph)
        self.view = OnnxView(model.graph)
        self.b = GraphBuilder(model.graph.name or "onnx")
        self.env: dict[str, str] = {}
        self.params: dict[str, np.ndarray] = {}
        self.unsupported: Counter = Counter()
        self.blocked: set[str] = set()     # outputs of unsupported nodes: their users are skipped

    def value(self, name: str) -> str:
        if name in self.env:
            return self.env[name]
        array = self.view.const(name)
        if array is None:
            raise IRError(f"ONNX value '{name}' is used before it is defined")
        return self.param(name, array)

    def param(self, name: str, array: np.ndarray) -> str:
        if name not in self.params:
            dtype = DType(str(array.dtype)) if str(array.dtype) in DType.__members__ else None
            if dtype is None:
                raise IRError(f"ONNX initializer '{name}' has dtype {array.dtype}, which the IR does not have")
            self.b.param(name, TensorType(dtype, tuple(array.shape)))
            self.params[name] = np.ascontiguousarray(array)
            self.env[name] = name
        return name

    def emit(self, op: str, node: onnx.NodeProto, *inputs, **kw):
        self.env[node.output[0]] = self.b.op1(op, *inputs, name=node.output[0], **kw)


def read_inputs(r: Reader, graph: onnx.GraphProto):
    weights = {t.name for t in graph.initializer}
    for inp in graph.input:
        if inp.name in weights:
            continue
        t = inp.type.tensor_type
        if t.elem_type not in IR_DTYPES:
            raise IRError(f"ONNX input '{inp.name}' has element type {t.elem_type}, which the IR does not have")
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or f"{inp.name}_{i}")
                     for i, d in enumerate(t.shape.dim))
        r.env[inp.name] = r.b.input(inp.name, TensorType(IR_DTYPES[t.elem_type], dims))


def read_ops(model: onnx.ModelProto) -> tuple[Graph, dict[str, np.ndarray], list[MoEMatch]]:
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    r = Reader(model_copy)
    read_inputs(r, model_copy.graph)
    matches, notes = find_moe(r.view)
    replaced = {name: m for m in matches for name in m.nodes}
    for node in r.view.nodes:
        m = replaced.get(node.name)
        if m is not None:
            if node.name == m.first:
                emit_moe(r, m, len([x for x in matches if x is m]))
            continue
        if node.op_type == "Constant":
            continue
        blocked = bool(r.blocked & set(node.input))
        if blocked or not map_dense(r, node):
            if not blocked or node.op_type not in DENSE_OPS:
                r.unsupported[describe(r, node)] += 1
            r.blocked.update(node.output)
    if r.unsupported:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(r.unsupported.items()))
        hint = f"; {'; '.join(notes)}" if notes else ""
        raise IRError(f"unsupported ONNX op(s): {listed}. The importer maps {', '.join(DENSE_OPS)} and "
                      f"Mixtral-style MoE loops{hint}")
    graph = r.b.finish(*(r.env[o.name] for o in model_copy.graph.output))
    return verify(graph), r.params, matches


def describe(r: Reader, node: onnx.NodeProto) -> str:
    if node.op_type in ("Gemm", "MatMul", "Gather"):
        return f"{node.op_type}(non-constant weight or unsupported attributes)"
    return node.op_type


def linear_weight(r: Reader, node: onnx.NodeProto) -> tuple[str, str | None] | None:
    w = r.view.const(node.input[1])
    if w is None or w.ndim != 2:
        return None
    a = attrs(node)
    if node.op_type == "Gemm":
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            return None
        name = node.input[1] if a.get("transB", 0) else r.param(f"{node.input[1]}.T", w.T)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and (r.view.const(bias) is None or r.view.const(bias).ndim != 1):
            return None
        return r.value(name), (r.value(bias) if bias else None)
    return r.param(f"{node.input[1]}.T", w.T), None


def map_dense(r: Reader, node: onnx.NodeProto) -> bool:
    """Emits the IR op for a dense ONNX node; False when it does not map (the IR rejects it too)."""
    try:
        return map_dense_op(r, node)
    except IRError:
        return False


def map_dense_op(r: Reader, node: onnx.NodeProto) -> bool:
    op, a = node.op_type, attrs(node)
    if op == "Identity":
        r.env[node.output[0]] = r.value(node.input[0])
    elif op in ("Add", "Mul"):
        r.emit(op.lower(), node, r.value(node.input[0]), r.value(node.input[1]))
    elif op == "Sigmoid":
        r.emit("sigmoid", node, r.value(node.input[0]))
    elif op == "Softmax":
        r.emit("softmax", node, r.value(node.input[0]), axis=a.get("axis", -1))
    elif op == "Gelu":
        r.emit("gelu", node, r.value(node.input[0]), approximate=a.get("approximate", "none"))
    elif op in ("Gemm", "MatMul"):
        found = linear_weight(r, node)
        if found is None:
            return False
        r.emit("linear", node, r.value(node.input[0]), *found)
    elif op == "Gather" and r.view.const(node.input[0]) is not None and a.get("axis", 0) == 0:
        r.emit("embedding", node, r.value(node.input[1]), r.value(node.input[0]))
    else:
        return False
    return True


def emit_moe(r: Reader, m: MoEMatch, number: int):
    b = r.b
    prefix = m.router_name[:-len("router.weight")] if m.router_name.endswith("router.weight") else f"moe{number}."
    x = r.value(m.x)
    dtype = b.type_of(x).dtype.value
    router_w = r.param(m.router_name, m.router_weight)
    weights, indices, _ = b.op("router", x, router_w, None, None, name=f"{prefix}router", top_k=m.top_k,
                               scoring="softmax", normalize=m.normalize)
    rows, offsets, order = b.op("dispatch", x, indices, name=f"{prefix}dispatch",
                                num_experts=m.router_weight.shape[0])
    gate_up = r.param(f"{prefix}experts.gate_up", np.concatenate([m.gate_EFH, m.up_EFH], axis=1).astype(dtype))
    down = r.param(f"{prefix}experts.down", m.down_EHF.astype(dtype))
    h = b.op1("swiglu", b.op1("grouped_matmul", rows, gate_up, offsets, name=f"{prefix}gate_up"),
              name=f"{prefix}swiglu")
    y = b.op1("grouped_matmul", h, down, offsets, name=f"{prefix}down")
    r.env[m.output] = b.op1("combine", y, order, weights, name=m.output)
