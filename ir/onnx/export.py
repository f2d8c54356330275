"""IR graph + parameters -> an ONNX model in standard operators (opset 21), with the IR JSON kept in
the model's metadata so our own files import back exactly. Parameters come in as numpy arrays (or
anything with __array__); torch tensors are converted by the caller."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import IRError
from ..graph import Graph
from ..rewrites import ExpertFFN, expert_ffns
from ..serialize import to_json
from ..types import DType
from ..verify import verify
from . import lower_moe, lower_ops
from .builder import IR_VERSION, ONNX_DTYPES, OPSET, OnnxBuilder, value_info

IR_METADATA_KEY = "portable_moe.ir"
NODES_KEY = "portable_moe.nodes_sha256"     # the IR is trusted on import only if the nodes are unchanged
PRODUCER = "portable_moe"

LOWERINGS = {
    "embedding": lower_ops.embedding, "rms_norm": lower_ops.rms_norm, "linear": lower_ops.linear,
    "add": lower_ops.add, "mul": lower_ops.mul, "silu": lower_ops.silu, "sigmoid": lower_ops.sigmoid,
    "gelu": lower_ops.gelu, "softmax": lower_ops.softmax, "attention": lower_ops.attention,
    "cross_entropy": lower_ops.cross_entropy, "swiglu": lower_ops.swiglu, "router": lower_moe.router,
    "dispatch": lower_moe.dispatch, "grouped_matmul": lower_moe.grouped_matmul, "combine": lower_moe.combine,
}


def as_array(value, name: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except Exception as e:  # noqa: BLE001 - any failure to view as an array is the same user error
        raise IRError(f"parameter '{name}' cannot be read as an array ({type(value).__name__}): {e}") from None


def initializer(graph: Graph, params: Mapping, name: str) -> onnx.TensorProto:
    if name not in params:
        raise IRError(f"parameter '{name}' is missing; pass every graph parameter or params_as_inputs=True")
    array = as_array(params[name], name)
    want = {p.name: p.type for p in graph.params}[name]
    if tuple(array.shape) != tuple(want.shape):
        raise IRError(f"parameter '{name}' has shape {list(array.shape)}, graph says {want}")
    tensor = numpy_helper.from_array(array, name)
    if tensor.data_type != ONNX_DTYPES[want.dtype]:
        raise IRError(f"parameter '{name}' is {array.dtype}, graph says {want}")
    return tensor


def lower_fused(b: OnnxBuilder, chain: ExpertFFN, types):
    """One per-expert chain (gate Gemm, up Gemm, silu*up, down Gemm) and a single Concat: saves the
    [R, 2F] Concat, its Split and one Slice per expert. Same arithmetic."""
    rows, w_gate_up, offsets = chain.gate_up.inputs
    w_type = types[w_gate_up]
    y = lower_moe.expert_ffn(b, rows, w_gate_up, chain.down.inputs[1], offsets,
                             lower_ops.static(w_type.shape[0], "expert count"), w_type.shape[1] // 2)
    b.op_into("Identity", [y], [chain.down.outputs[0].name])


def lower_graph(graph: Graph, b: OnnxBuilder, fuse: bool = True):
    types = graph.types()
    chains = expert_ffns(graph) if fuse else {}
    skip = {c.swiglu.name for c in chains.values()} | {c.down.name for c in chains.values()}
    for node in graph.nodes:
        if node.name in chains:
            lower_fused(b, chains[node.name], types)
            continue
        if node.name in skip:
            continue
        lowering = LOWERINGS.get(node.op)
        if lowering is None:
            raise IRError("no ONNX lowering for this op", node.name, node.op)
        ins_types = [None if i is None else types[i] for i in node.inputs]
        try:
            outs = lowering(b, list(node.inputs), ins_types, **node.attrs)
        except IRError as e:
            raise IRError(e.problem, node.name, node.op) from None
        for src, value in zip(outs, node.outputs, strict=True):
            b.op_into("Identity", [src], [value.name])


def export(graph: Graph, params: Mapping | None = None, *, params_as_inputs: bool = False,
           keep_ir: bool = True, fuse: bool = True) -> onnx.ModelProto:
    """The ONNX model of a verified graph: graph inputs (then params, when params_as_inputs) as model
    inputs, params otherwise as initializers, symbolic dims as dim_params."""
    verify(graph)
    fp8 = [v.name for v in graph.values().values() if v.type.dtype in (DType.float8_e4m3fn, DType.float8_e4m3fnuz)]
    if fp8:
        raise IRError(f"ONNX export of fp8 values ({', '.join(fp8[:3])}...) is not supported: the IR defines no "
                      "fp8 compute yet; cast the model to bfloat16 or float16")
    b = OnnxBuilder()
    lower_graph(graph, b, fuse)
    values = graph.values()
    inputs = [value_info(v.name, v.type.dtype, v.type.shape) for v in graph.inputs]
    if params_as_inputs:
        inputs += [value_info(p.name, p.type.dtype, p.type.shape) for p in graph.params]
        weights = []
    else:
        weights = [initializer(graph, params or {}, p.name) for p in graph.params]
    outputs = [value_info(o, values[o].type.dtype, values[o].type.shape) for o in graph.outputs]
    onnx_graph = helper.make_graph(b.nodes, graph.name, inputs, outputs, initializer=weights + b.initializers)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name=PRODUCER)
    if keep_ir:
        helper.set_model_props(model, {IR_METADATA_KEY: to_json(graph), NODES_KEY: nodes_digest(onnx_graph)})
    return model


def nodes_digest(graph: onnx.GraphProto) -> str:
    h = hashlib.sha256()
    for node in graph.node:
        h.update(node.SerializeToString(deterministic=True))
    return h.hexdigest()


def check(model: onnx.ModelProto | str | Path) -> None:
    """onnx.checker with full_check (which runs strict shape inference); raises IRError on failure."""
    try:
        onnx.checker.check_model(model if isinstance(model, onnx.ModelProto) else str(model), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise IRError(f"ONNX checker rejected the model: {str(e).splitlines()[0]}") from None


def save(model: onnx.ModelProto, path: str | Path, external_data: bool = False) -> Path:
    """Writes the model; with external_data the weights go to `<file>.data` beside it (needed > 2 GiB)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path
