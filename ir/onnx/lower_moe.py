"""The MoE ops written as standard ONNX ops (TopK, Gather, ScatterElements, Slice, Gemm).

Shapes in names: T tokens, H hidden, E experts, K top-k, R = T*K rows, G expert groups, F width.
Determinism as in ir/ops.py: ONNX TopK (largest, sorted) puts the lower index first on ties; the
dispatch sort key expert*R + p is distinct per pair, so sorting it is stable by construction."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper

from ..types import DType
from .builder import OnnxBuilder
from .lower_ops import NP, acc_of, fconst, flat_rows, from_acc, gemm_t, lead_shape_with, static, to_acc


def topk(b: OnnxBuilder, x: str, k: str, largest: int = 1) -> tuple[str, str]:
    values, indices = b.op("TopK", x, k, outputs=2, axis=-1, largest=largest, sorted=1)
    return values, indices


def group_mask(b, selection_TE, experts, num_groups, top_groups, group_score, acc):
    grouped_TGX = b.op1("Reshape", selection_TE, b.const([-1, num_groups, experts // num_groups]))
    if group_score == "max":
        score_TG = b.op1("ReduceMax", grouped_TGX, b.const([-1]), keepdims=0)
    else:
        score_TG = b.op1("ReduceSum", topk(b, grouped_TGX, b.const([2]))[0], b.const([-1]), keepdims=0)
    keep_TG = topk(b, score_TG, b.const([top_groups]))[1]
    zeros_TG = b.op1("ConstantOfShape", b.shape_of(score_TG), value=_scalar(0.0, acc))
    ones = b.op1("ConstantOfShape", b.shape_of(keep_TG), value=_scalar(1.0, acc))
    mask_TG = b.op1("Cast", b.op1("ScatterElements", zeros_TG, keep_TG, ones, axis=1), to=TensorProto.BOOL)
    mask_TG1 = b.op1("Unsqueeze", mask_TG, b.const([-1]))
    masked = b.op1("Where", mask_TG1, grouped_TGX, fconst(b, -np.inf, acc))
    return b.op1("Reshape", masked, b.const([-1, experts]))


def _scalar(value, dtype: DType):
    return numpy_helper.from_array(np.array([value], dtype=NP[dtype]))


def router(b, ins, types, *, top_k, scoring, num_groups, top_groups, group_score, normalize, scaling):
    x, w = ins[0], ins[1]
    bias, score_bias = (list(ins) + [None, None])[2:4]
    dt = types[0].dtype
    acc = acc_of(dt)
    experts, width = static(types[1].shape[0], "expert count"), types[1].shape[1]
    args = [None if a is None else (a if t.dtype == acc else b.cast(a, acc))
            for a, t in zip((x, w, bias), types[:3], strict=False)]
    logits_TE = gemm_t(b, flat_rows(b, args[0], width), args[1], args[2])
    scores_TE = {"softmax": lambda: b.op1("Softmax", logits_TE, axis=-1),
                 "sigmoid": lambda: b.op1("Sigmoid", logits_TE), "softmax_topk": lambda: logits_TE}[scoring]()
    selection_TE = scores_TE
    if score_bias is not None:
        sb = score_bias if types[3].dtype == acc else b.cast(score_bias, acc)
        selection_TE = b.op1("Add", scores_TE, sb)
    if num_groups > 1:
        selection_TE = group_mask(b, selection_TE, experts, num_groups, top_groups, group_score, acc)
    idx_TK = topk(b, selection_TE, b.const([top_k]))[1]
    weights_TK = b.op1("GatherElements", scores_TE, idx_TK, axis=1)
    if scoring == "softmax_topk":
        weights_TK = b.op1("Softmax", weights_TK, axis=-1)
    elif normalize:
        total = b.op1("Add", b.op1("ReduceSum", weights_TK, b.const([-1]), keepdims=1), fconst(b, 1e-20, acc))
        weights_TK = b.op1("Div", weights_TK, total)
    if scaling != 1.0:
        weights_TK = b.op1("Mul", weights_TK, fconst(b, scaling, acc))
    weights = b.op1("Reshape", from_acc(b, weights_TK, dt), lead_shape_with(b, x, top_k))
    return [weights, b.op1("Reshape", idx_TK, lead_shape_with(b, x, top_k)),
            b.op1("Reshape", logits_TE, lead_shape_with(b, x, experts))]


def dispatch(b, ins, types, *, num_experts):
    x, indices = ins
    top_k = static(types[1].shape[-1], "top_k (last dim of indices)")
    flat_R = b.op1("Reshape", indices, b.const([-1]))
    if types[1].dtype != DType.int64:
        flat_R = b.cast(flat_R, DType.int64)
    rows = b.shape_of(flat_R)
    pairs_R = b.op1("Range", b.const(0), b.op1("Squeeze", rows, b.const([0])), b.const(1))
    key_R = b.op1("Add", b.op1("Mul", flat_R, rows), pairs_R)
    order_R = topk(b, key_R, rows, largest=0)[1]
    token_R = b.op1("Div", order_R, b.const(top_k))
    rows_RH = b.op1("Gather", flat_rows(b, x, types[0].shape[-1]), token_R, axis=0)
    below_ER = b.op1("Less", b.op1("Unsqueeze", flat_R, b.const([0])),
                     b.const(np.arange(num_experts + 1).reshape(-1, 1)))
    offsets = b.op1("ReduceSum", b.cast(below_ER, DType.int64), b.const([1]), keepdims=0)
    return [rows_RH, offsets, order_R]


def segment(b, x, offsets, e):
    start = b.op1("Slice", offsets, b.const([e]), b.const([e + 1]))
    end = b.op1("Slice", offsets, b.const([e + 1]), b.const([e + 2]))
    return b.op1("Slice", x, start, end, b.const([0]))


def grouped_matmul(b, ins, types):
    x, w, offsets = ins
    dt = types[0].dtype
    experts = static(types[1].shape[0], "expert count")
    x = to_acc(b, x, dt)
    w = to_acc(b, w, dt)
    pieces = [gemm_t(b, segment(b, x, offsets, e), b.op1("Gather", w, b.const(e), axis=0)) for e in range(experts)]
    return [from_acc(b, b.op1("Concat", *pieces, axis=0), dt)]


def expert_ffn(b, x, w_gate_up, w_down, offsets, experts: int, width: int):
    """Per expert: down(silu(x @ gate^T) * (x @ up^T)); x, weights already in the compute dtype."""
    pieces = []
    for e in range(experts):
        seg = segment(b, x, offsets, e)
        w_e = b.op1("Gather", w_gate_up, b.const(e), axis=0)
        gate = gemm_t(b, seg, b.op1("Slice", w_e, b.const([0]), b.const([width]), b.const([0])))
        up = gemm_t(b, seg, b.op1("Slice", w_e, b.const([width]), b.const([2 * width]), b.const([0])))
        h = b.op1("Mul", b.op1("Mul", gate, b.op1("Sigmoid", gate)), up)
        pieces.append(gemm_t(b, h, b.op1("Gather", w_down, b.const(e), axis=0)))
    return b.op1("Concat", *pieces, axis=0)


def combine(b, ins, types):
    y, order, weights = ins
    dt = types[0].dtype
    acc = acc_of(dt)
    top_k, width = static(types[2].shape[-1], "top_k (last dim of weights)"), types[0].shape[1]
    rows = b.shape_of(order)
    zeros_R = b.op1("ConstantOfShape", rows, value=_int_scalar(0))
    pairs_R = b.op1("Range", b.const(0), b.op1("Squeeze", rows, b.const([0])), b.const(1))
    inverse_R = b.op1("ScatterElements", zeros_R, order, pairs_R, axis=0)
    y_TKH = to_acc(b, b.op1("Gather", y, b.op1("Reshape", inverse_R, b.const([-1, top_k])), axis=0), dt)
    w_TK = to_acc(b, b.op1("Reshape", weights, b.const([-1, top_k])), dt)
    out = None
    for k in range(top_k):
        term = b.op1("Mul", b.op1("Gather", y_TKH, b.const(k), axis=1),
                     b.op1("Slice", w_TK, b.const([k]), b.const([k + 1]), b.const([1])))
        out = term if out is None else b.op1("Add", out, term)
    if acc != dt:
        out = b.cast(out, dt)
    return [b.op1("Reshape", out, lead_shape_with(b, weights, width))]


def _int_scalar(value):
    return numpy_helper.from_array(np.array([value], dtype=np.int64))
