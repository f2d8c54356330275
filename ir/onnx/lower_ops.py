"""Each IR op written as standard ONNX ops. A lowering gets the builder, the node's ONNX input names,
the IR input types and the attributes, and returns the ONNX names of the node's outputs.

Shapes in names: T tokens, H hidden, E experts, K top-k, R = T*K rows, G groups, B batch, S sequence,
N heads, D head dim. Low-precision floats compute in float32, float64 stays float64 (as the reference)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import IRError
from ..types import DType, TensorType
from .builder import OnnxBuilder

NP = {DType.float64: np.float64, DType.float32: np.float32, DType.float16: np.float16}


def acc_of(dtype: DType) -> DType:
    return DType.float64 if dtype == DType.float64 else DType.float32


def to_acc(b: OnnxBuilder, x: str, dtype: DType) -> str:
    return x if dtype == acc_of(dtype) else b.cast(x, acc_of(dtype))


def from_acc(b: OnnxBuilder, x: str, dtype: DType) -> str:
    return x if dtype == acc_of(dtype) else b.cast(x, dtype)


def fconst(b: OnnxBuilder, value, dtype: DType) -> str:
    return b.const(value, NP[dtype])


def lead_shape_with(b: OnnxBuilder, x: str, last: int) -> str:
    """Shape(x)[:-1] + [last]: the shape that keeps x's leading dims."""
    return b.op1("Concat", b.shape_of(x, end=-1), b.const([last]), axis=0)


def flat_rows(b: OnnxBuilder, x: str, width) -> str:
    return b.op1("Reshape", x, b.const([-1, width]))


def gemm_t(b: OnnxBuilder, x_MK: str, w_NK: str, bias: str | None = None) -> str:
    return b.op1("Gemm", x_MK, w_NK, *([bias] if bias else []), transB=1)


def embedding(b, ins, types, **_):
    return [b.op1("Gather", ins[1], ins[0], axis=0)]


def rms_norm(b, ins, types, *, eps):
    x, w = ins
    dt = types[0].dtype
    x32 = to_acc(b, x, dt)
    mean = b.op1("ReduceMean", b.op1("Mul", x32, x32), b.const([-1]), keepdims=1)
    inv = b.op1("Reciprocal", b.op1("Sqrt", b.op1("Add", mean, fconst(b, eps, acc_of(dt)))))
    return [b.op1("Mul", w, from_acc(b, b.op1("Mul", x32, inv), dt))]


def linear(b, ins, types):
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    dt, width, out = types[0].dtype, types[1].shape[1], types[1].shape[0]
    args = [to_acc(b, a, dt) if a else None for a in (x, w, bias)]
    if types[0].rank == 2:
        return [from_acc(b, gemm_t(b, *args), dt)]
    y = gemm_t(b, flat_rows(b, args[0], width), args[1], args[2])
    return [b.op1("Reshape", from_acc(b, y, dt), lead_shape_with(b, x, out))]


def add(b, ins, types):
    return [b.op1("Add", *ins)]


def mul(b, ins, types):
    return [b.op1("Mul", *ins)]


def sigmoid(b, ins, types):
    return [b.op1("Sigmoid", ins[0])]


def silu(b, ins, types):
    return [b.op1("Mul", ins[0], b.op1("Sigmoid", ins[0]))]


def gelu(b, ins, types, *, approximate):
    return [b.op1("Gelu", ins[0], approximate=approximate)]


def softmax(b, ins, types, *, axis):
    dt = types[0].dtype
    return [from_acc(b, b.op1("Softmax", to_acc(b, ins[0], dt), axis=axis), dt)]


def swiglu(b, ins, types):
    gate, up = b.op("Split", ins[0], outputs=2, axis=-1, num_outputs=2)
    return [b.op1("Mul", b.op1("Mul", gate, b.op1("Sigmoid", gate)), up)]


def cross_entropy(b, ins, types, *, ignore_index):
    """Mean of -log_softmax(logits)[target] over kept targets. Not SoftmaxCrossEntropyLoss: its
    onnxruntime function body cannot reshape zero rows; 0 kept targets give NaN, as in torch."""
    dt = types[0].dtype
    acc = acc_of(dt)
    logp_NV = b.op1("LogSoftmax", to_acc(b, flat_rows(b, ins[0], types[0].shape[-1]), dt), axis=-1)
    targets_N = b.op1("Reshape", ins[1], b.const([-1]))
    if types[1].dtype != DType.int64:
        targets_N = b.cast(targets_N, DType.int64)
    keep_N = b.op1("Not", b.op1("Equal", targets_N, b.const(ignore_index)))
    safe_N1 = b.op1("Unsqueeze", b.op1("Where", keep_N, targets_N, b.const(0)), b.const([1]))
    picked_N = b.op1("Squeeze", b.op1("GatherElements", logp_NV, safe_N1, axis=1), b.const([1]))
    keep = b.cast(keep_N, acc)
    total = b.op1("ReduceSum", b.op1("Mul", picked_N, keep), b.const([0]), keepdims=0)
    loss = b.op1("Neg", b.op1("Div", total, b.op1("ReduceSum", keep, b.const([0]), keepdims=0)))
    return [from_acc(b, loss, dt)]


# ----- attention -----

def rotate_half(b, x):
    x1, x2 = b.op("Split", x, outputs=2, axis=-1, num_outputs=2)
    return b.op1("Concat", b.op1("Neg", x2), x1, axis=-1)


def rope_tables(b, x_BSND, head_dim: int, theta: float, acc: DType):
    """cos and sin of the rotary angles, [1, S, 1, D], computed in float64 like the reference."""
    seq = b.op1("Squeeze", b.shape_of(x_BSND, 1, 2), b.const([0]))
    pos_S = b.cast(b.op1("Range", b.const(0), seq, b.const(1)), DType.float64)
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    freqs = b.op1("Mul", b.op1("Unsqueeze", pos_S, b.const([1])), b.const(inv_freq, np.float64))
    emb = b.op1("Unsqueeze", b.cast(b.op1("Concat", freqs, freqs, axis=-1), acc), b.const([0, 2]))
    return b.op1("Cos", emb), b.op1("Sin", emb)


def rope(b, x, tables):
    cos, sin = tables
    return b.op1("Add", b.op1("Mul", x, cos), b.op1("Mul", rotate_half(b, x), sin))


def heads(b, x, n, d, norm, eps, dt):
    x_BSND = b.op1("Reshape", x, b.const([0, 0, n, d]))
    if norm is not None:
        x_BSND = rms_norm(b, [x_BSND, norm], [TensorType(dt, (0,))], eps=eps)[0]
    return to_acc(b, x_BSND, dt)


def causal_mask(b, scores_BNSS):
    seq = b.op1("Squeeze", b.shape_of(scores_BNSS, 2, 3), b.const([0]))
    pos = b.op1("Range", b.const(0), seq, b.const(1))
    return b.op1("Greater", b.op1("Unsqueeze", pos, b.const([0])), b.op1("Unsqueeze", pos, b.const([1])))


def attention(b, ins, types, *, num_heads, num_kv_heads, head_dim, causal, rope_theta, eps):
    q, k, v = ins[:3]
    q_norm, k_norm = (ins + [None, None])[3:5]
    dt, acc, group = types[0].dtype, acc_of(types[0].dtype), num_heads // num_kv_heads
    q_BSND = heads(b, q, num_heads, head_dim, q_norm, eps, dt)
    k_BSND = heads(b, k, num_kv_heads, head_dim, k_norm, eps, dt)
    v_BSND = heads(b, v, num_kv_heads, head_dim, None, eps, dt)
    if rope_theta:
        tables = rope_tables(b, q_BSND, head_dim, rope_theta, acc)
        q_BSND, k_BSND = rope(b, q_BSND, tables), rope(b, k_BSND, tables)
    if group > 1:
        k_BSND, v_BSND = (b.op1("Reshape", b.op1("Expand", b.op1("Unsqueeze", t, b.const([3])),
                                                 b.const([1, 1, 1, group, 1])), b.const([0, 0, num_heads, head_dim]))
                          for t in (k_BSND, v_BSND))
    q_BNSD = b.op1("Transpose", q_BSND, perm=[0, 2, 1, 3])
    k_BNDS = b.op1("Transpose", k_BSND, perm=[0, 2, 3, 1])
    scores = b.op1("Div", b.op1("MatMul", q_BNSD, k_BNDS), fconst(b, math.sqrt(head_dim), acc))
    if causal:
        scores = b.op1("Where", causal_mask(b, scores), fconst(b, -np.inf, acc), scores)
    out_BNSD = b.op1("MatMul", b.op1("Softmax", scores, axis=-1), b.op1("Transpose", v_BSND, perm=[0, 2, 1, 3]))
    out = b.op1("Reshape", b.op1("Transpose", out_BNSD, perm=[0, 2, 1, 3]), b.const([0, 0, num_heads * head_dim]))
    return [from_acc(b, out, dt)]


def static(dim, what: str) -> int:
    if not isinstance(dim, int):
        raise IRError(f"ONNX export needs a static {what}, got '{dim}'")
    return dim
