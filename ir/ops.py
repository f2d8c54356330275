"""The op set: one schema per op, giving its inputs, attributes, type rule and meaning.

Shapes in the meanings: T tokens (any leading dims, flattened), H hidden, E experts, K top-k,
R = T*K dispatched rows, F expert FFN width, V vocabulary. meanings.py holds the
executable form of these meanings (torch); every backend must agree with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import IRError
from .types import FLOATS, INTS, DType, TensorType, dim_product


@dataclass(frozen=True)
class Attr:
    kind: type
    default: Any = None
    required: bool = False
    choices: tuple = ()
    check: Callable[[Any], str | None] | None = None


@dataclass(frozen=True)
class OpSchema:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    infer: Callable[..., list[TensorType]]
    meaning: str
    optional: frozenset[str] = frozenset()
    attrs: dict[str, Attr] = field(default_factory=dict)

    @property
    def required_inputs(self) -> int:
        return sum(1 for name in self.inputs if name not in self.optional)


def positive(v) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


def fail(problem: str):
    raise IRError(problem)


def want_float(t: TensorType, what: str):
    if t.dtype not in FLOATS:
        fail(f"{what} must be a float tensor, got {t}")


def want_int(t: TensorType, what: str):
    if t.dtype not in INTS:
        fail(f"{what} must be an int tensor, got {t}")


def want_rank(t: TensorType, rank: int, what: str):
    if t.rank != rank:
        fail(f"{what} must have rank {rank}, got {t}")


def want_dim(a, b, what: str):
    if a != b:
        fail(f"{what}: {a} != {b}")


def want_same_dtype(a: TensorType, b: TensorType, what: str):
    if a.dtype != b.dtype:
        fail(f"{what}: dtype {a.dtype.value} != {b.dtype.value}")


def want_feature_dim(t: TensorType, what: str):
    if t.rank < 1:
        fail(f"{what} must have a feature dim, got {t}")


# ----- dense ops -----

def infer_embedding(ids, weight, **_):
    want_int(ids, "ids")
    want_float(weight, "weight")
    want_rank(weight, 2, "weight")
    return [TensorType(weight.dtype, ids.shape + (weight.shape[1],))]


def infer_rms_norm(x, weight, **_):
    want_float(x, "x")
    want_feature_dim(x, "x")
    want_rank(weight, 1, "weight")
    want_dim(x.shape[-1], weight.shape[0], "x feature dim vs weight")
    return [x]


def infer_linear(x, weight, bias=None, **_):
    want_float(x, "x")
    want_feature_dim(x, "x")
    want_rank(weight, 2, "weight")
    want_same_dtype(x, weight, "x vs weight")
    want_dim(x.shape[-1], weight.shape[1], "x feature dim vs weight in-features")
    if bias is not None:
        want_rank(bias, 1, "bias")
        want_dim(bias.shape[0], weight.shape[0], "bias vs weight out-features")
    return [x.with_shape(x.shape[:-1] + (weight.shape[0],))]


def infer_broadcast(a, b, **_):
    want_float(a, "a")
    want_same_dtype(a, b, "a vs b")
    rank = max(a.rank, b.rank)
    da = (1,) * (rank - a.rank) + a.shape
    db = (1,) * (rank - b.rank) + b.shape
    out = []
    for i, (x, y) in enumerate(zip(da, db, strict=True)):
        if x != y and x != 1 and y != 1:
            fail(f"shapes {a} and {b} do not broadcast at dim {i}")
        out.append(y if x == 1 else x)
    return [a.with_shape(out)]


def infer_unary(x, **_):
    want_float(x, "x")
    return [x]


def infer_softmax(x, axis=-1, **_):
    want_float(x, "x")
    if not -x.rank <= axis < x.rank:
        fail(f"axis {axis} out of range for {x}")
    return [x]


def infer_attention(q, k, v, q_norm=None, k_norm=None, *, num_heads, num_kv_heads, head_dim, **_):
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        want_float(t, n)
        want_rank(t, 3, n)
        want_same_dtype(t, q, f"{n} vs q")
    if num_heads % num_kv_heads:
        fail(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    want_dim(q.shape[-1], num_heads * head_dim, "q width vs num_heads*head_dim")
    want_dim(k.shape[-1], num_kv_heads * head_dim, "k width vs num_kv_heads*head_dim")
    want_dim(v.shape[-1], num_kv_heads * head_dim, "v width vs num_kv_heads*head_dim")
    want_dim(q.shape[:2], k.shape[:2], "q vs k batch/sequence dims")
    want_dim(k.shape[:2], v.shape[:2], "k vs v batch/sequence dims")
    for t, n in ((q_norm, "q_norm"), (k_norm, "k_norm")):
        if t is not None:
            want_rank(t, 1, n)
            want_dim(t.shape[0], head_dim, f"{n} vs head_dim")
    return [q]


def infer_cross_entropy(logits, targets, **_):
    want_float(logits, "logits")
    want_int(targets, "targets")
    want_dim(logits.shape[:-1], targets.shape, "logits leading dims vs targets")
    return [logits.with_shape(())]


# ----- MoE ops -----

def infer_router(x, weight, bias=None, score_bias=None, *, top_k, num_groups, top_groups, **_):
    want_float(x, "x")
    want_feature_dim(x, "x")
    want_rank(weight, 2, "weight")
    want_dim(x.shape[-1], weight.shape[1], "x feature dim vs router weight")
    experts = weight.shape[0]
    if not isinstance(experts, int):
        fail(f"router weight needs a static expert count, got {weight}")
    for t, n in ((bias, "bias"), (score_bias, "score_bias")):
        if t is not None:
            want_rank(t, 1, n)
            want_dim(t.shape[0], experts, f"{n} vs experts")
    if top_k > experts:
        fail(f"top_k={top_k} > {experts} experts")
    if experts % num_groups:
        fail(f"num_groups={num_groups} does not divide {experts} experts")
    if top_groups > num_groups:
        fail(f"top_groups={top_groups} > num_groups={num_groups}")
    if top_k > top_groups * (experts // num_groups):
        fail(f"top_k={top_k} > experts in the {top_groups} selected groups")
    lead = x.shape[:-1]
    return [x.with_shape(lead + (top_k,)), TensorType(DType.int64, lead + (top_k,)),
            TensorType(DType.float32 if x.dtype != DType.float64 else DType.float64, lead + (experts,))]


def infer_dispatch(x, indices, *, num_experts, **_):
    want_float(x, "x")
    want_feature_dim(x, "x")
    want_int(indices, "indices")
    want_dim(x.shape[:-1], indices.shape[:-1], "x vs indices token dims")
    rows = dim_product(*indices.shape)
    return [x.with_shape((rows, x.shape[-1])), TensorType(DType.int64, (num_experts + 1,)),
            TensorType(DType.int64, (rows,))]


def infer_grouped_matmul(x, weight, offsets, **_):
    want_float(x, "x")
    want_rank(x, 2, "x")
    want_rank(weight, 3, "weight")
    want_same_dtype(x, weight, "x vs weight")
    want_dim(x.shape[1], weight.shape[2], "x feature dim vs weight in-features")
    want_int(offsets, "offsets")
    want_rank(offsets, 1, "offsets")
    if isinstance(weight.shape[0], int):
        want_dim(offsets.shape[0], weight.shape[0] + 1, "offsets length vs experts+1")
    return [x.with_shape((x.shape[0], weight.shape[1]))]


def infer_swiglu(x, **_):
    want_float(x, "x")
    want_feature_dim(x, "x")
    width = x.shape[-1]
    if not isinstance(width, int) or width % 2:
        fail(f"last dim must be an even size (gate then up), got {x}")
    return [x.with_shape(x.shape[:-1] + (width // 2,))]


def infer_combine(y, order, weights, **_):
    want_float(y, "y")
    want_rank(y, 2, "y")
    want_int(order, "order")
    want_rank(order, 1, "order")
    want_dim(y.shape[0], order.shape[0], "y rows vs order")
    want_dim(y.shape[0], dim_product(*weights.shape), "y rows vs tokens*top_k of weights")
    return [y.with_shape(weights.shape[:-1] + (y.shape[1],))]


SCHEMAS: dict[str, OpSchema] = {s.name: s for s in [
    OpSchema("embedding", ("ids", "weight"), ("y",), infer_embedding,
             "y[...] = weight[ids[...]]; ids out of range is an error."),
    OpSchema("rms_norm", ("x", "weight"), ("y",), infer_rms_norm,
             "y = weight * (x / sqrt(mean(x^2, last dim) + eps)), normalised in float32 (float64 for float64) "
             "and cast back to x's dtype before the weight.",
             attrs={"eps": Attr(float, 1e-6, check=positive)}),
    OpSchema("linear", ("x", "weight", "bias"), ("y",), infer_linear,
             "y = x @ weight^T + bias; weight is [out, in].", optional=frozenset({"bias"})),
    OpSchema("add", ("a", "b"), ("y",), infer_broadcast, "y = a + b (numpy broadcasting)."),
    OpSchema("mul", ("a", "b"), ("y",), infer_broadcast, "y = a * b (numpy broadcasting)."),
    OpSchema("silu", ("x",), ("y",), infer_unary, "y = x * sigmoid(x)."),
    OpSchema("sigmoid", ("x",), ("y",), infer_unary, "y = 1 / (1 + exp(-x))."),
    OpSchema("gelu", ("x",), ("y",), infer_unary, "y = gelu(x), exact (erf) or tanh approximation.",
             attrs={"approximate": Attr(str, "none", choices=("none", "tanh"))}),
    OpSchema("softmax", ("x",), ("y",), infer_softmax, "y = softmax(x) along axis, in float32.",
             attrs={"axis": Attr(int, -1)}),
    OpSchema("attention", ("q", "k", "v", "q_norm", "k_norm"), ("y",), infer_attention,
             "Multi-head attention over [batch, seq, heads*head_dim]: optional per-head RMS norm of q "
             "and k (weights q_norm/k_norm, eps), rotary embedding (rotate-half form, base rope_theta; "
             "0 disables) on q and k, grouped-query (kv head i serves q heads i*G..i*G+G-1), scale "
             "1/sqrt(head_dim), causal mask, softmax in float32.",
             optional=frozenset({"q_norm", "k_norm"}),
             attrs={"num_heads": Attr(int, required=True, check=positive),
                    "num_kv_heads": Attr(int, required=True, check=positive),
                    "head_dim": Attr(int, required=True, check=positive),
                    "causal": Attr(bool, True), "rope_theta": Attr(float, 10000.0),
                    "eps": Attr(float, 1e-6, check=positive)}),
    OpSchema("router", ("x", "weight", "bias", "score_bias"), ("weights", "indices", "logits"),
             infer_router,
             "logits = x @ weight^T + bias, in float32. scoring='softmax': scores = softmax(logits); "
             "'sigmoid': scores = sigmoid(logits); 'softmax_topk': scores = logits, softmax over the "
             "k picked. Selection uses scores + score_bias: with num_groups > 1 each group is scored "
             "(group_score 'max' of its experts, or 'top2_sum' of its best two), the top_groups best "
             "groups are kept and the rest masked, then the top_k experts are picked; every tie goes "
             "to the lower index. weights = scores of the picked experts (without score_bias), divided "
             "by (their sum + 1e-20) when normalize (DeepSeek-V3's guard against an all-zero sum), times "
             "scaling. Outputs the weights (x's dtype), the expert "
             "indices (int64, best first) and the float32 logits.",
             optional=frozenset({"bias", "score_bias"}),
             attrs={"top_k": Attr(int, required=True, check=positive),
                    "scoring": Attr(str, "softmax", choices=("softmax", "sigmoid", "softmax_topk")),
                    "num_groups": Attr(int, 1, check=positive), "top_groups": Attr(int, 1, check=positive),
                    "group_score": Attr(str, "max", choices=("max", "top2_sum")),
                    "normalize": Attr(bool, True), "scaling": Attr(float, 1.0, check=positive)}),
    OpSchema("dispatch", ("x", "indices"), ("rows", "offsets", "order"), infer_dispatch,
             "Flattens the (token, k) pairs in token-major order p = t*K + k and sorts them by expert, "
             "stably (equal experts keep p order). order[r] = p of row r; rows[r] = x[order[r] // K]; "
             "offsets[e] = number of pairs with expert < e (offsets[E] = T*K).",
             attrs={"num_experts": Attr(int, required=True, check=positive)}),
    OpSchema("grouped_matmul", ("x", "weight", "offsets"), ("y",), infer_grouped_matmul,
             "For each expert e: y[offsets[e]:offsets[e+1]] = x[offsets[e]:offsets[e+1]] @ weight[e]^T; "
             "weight is [E, out, in]; accumulation in float32 (float64 for float64)."),
    OpSchema("swiglu", ("x",), ("y",), infer_swiglu,
             "gate, up = x[..., :F], x[..., F:]; y = silu(gate) * up."),
    OpSchema("combine", ("y", "order", "weights"), ("out",), infer_combine,
             "out[t] = sum over k = 0..K-1 in that order of weights[t, k] * y[r] where order[r] = t*K + k; "
             "accumulated in float32 (float64 for float64)."),
    OpSchema("cross_entropy", ("logits", "targets"), ("loss",), infer_cross_entropy,
             "Mean over targets != ignore_index of -log_softmax(logits)[target], in float32.",
             attrs={"ignore_index": Attr(int, -100)}),
]}

MOE_OPS = frozenset({"router", "dispatch", "grouped_matmul", "swiglu", "combine"})
ALL_OPS = frozenset(SCHEMAS)


def schema(op: str) -> OpSchema:
    try:
        return SCHEMAS[op]
    except KeyError:
        raise IRError(f"unknown op '{op}'; known ops: {', '.join(sorted(SCHEMAS))}") from None


def normalize_attrs(s: OpSchema, attrs: dict) -> dict:
    """Checks attributes against the schema and fills defaults; ints are accepted for floats."""
    unknown = set(attrs) - set(s.attrs)
    if unknown:
        fail(f"unknown attribute(s) {sorted(unknown)}; {s.name} takes {sorted(s.attrs) or 'none'}")
    out = {}
    for name, spec in s.attrs.items():
        if name not in attrs:
            if spec.required:
                fail(f"missing required attribute '{name}'")
            out[name] = spec.default
            continue
        value = attrs[name]
        if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value) if abs(value) < 2**1023 else math.inf
        if not isinstance(value, spec.kind) or (spec.kind is int and isinstance(value, bool)):
            fail(f"attribute '{name}' must be {spec.kind.__name__}, got {value!r}"[:200])
        if spec.kind is float and not math.isfinite(value):
            fail(f"attribute '{name}' must be a finite number, got {value!r}")
        if spec.choices and value not in spec.choices:
            fail(f"attribute '{name}'={value!r} is not one of {list(spec.choices)}")
        problem = spec.check(value) if spec.check else None
        if problem:
            fail(f"attribute '{name}' {problem}")
        out[name] = value
    return out
