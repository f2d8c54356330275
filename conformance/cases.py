"""Cases as data: one record per op (and per model preset) whose generator makes the samples for a
dtype and a size scale: fresh seeded random inputs of several token counts, counts around tile
sizes, and the MoE edge cases (zero tokens, one token, experts without tokens, every token to one
expert, exact router ties, large magnitudes, NaN/Inf, non-contiguous inputs).

Legend: T tokens, H hidden, E experts, K top-k, R = T*K rows, F output features, V vocabulary."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..ir import DType, dim_product
from .models_cases import MODEL_CASES
from .router_cases import ROUTER_CASES, dispatch_edges, grouped_matmul_edges
from .sample import Arg, OpCase, Sample, Scale, case_seed, randn, rng, single_op

LARGE = {DType.float16: 100.0}    # float16 tops out at 65504: silu(x)*x must stay finite
LARGE_DEFAULT = 1e4
VOCAB = 50
# Gradients of saturating ops (softmax, sigmoid, ...) at inputs of 1e2..1e4 are rounding noise around
# 0 or 1, so the large-magnitude samples check only the forward of those ops.
LINEAR_OPS = frozenset({"linear", "grouped_matmul", "add", "mul", "combine", "dispatch", "embedding", "swiglu"})

Make = Callable[[int, int, str, str], Sample]   # (tokens, seed, name, mode) -> Sample


def magnitude(dtype: DType, mode: str) -> float:
    """'small' (1e-3; 1e-2 in float16, whose products of small values would go subnormal) brings
    mean(x^2) near rms_norm's eps, so a wrong eps shows."""
    small = 1e-2 if dtype == DType.float16 else 1e-3
    return {"large": LARGE.get(dtype, LARGE_DEFAULT), "small": small}.get(mode, 1.0)


def poison(t: torch.Tensor, mode: str) -> torch.Tensor:
    """NaN (or +Inf) in the first row, so the check sees it propagate to that row only."""
    if mode in ("nan", "inf") and t.numel():
        t = t.clone()
        t.view(-1, t.shape[-1])[0, 0] = float("nan") if mode == "nan" else float("inf")
    return t


def standard(op: str, make: Make, scale: Scale, seed: int, modes=("large", "nan")) -> list[Sample]:
    """Random token counts, tile edges, zero and one token, the special modes, a strided layout."""
    plan = [(t, f"tokens={t}#{s}", "random") for t in scale.tokens for s in range(scale.seeds)]
    plan += [(t, f"tile-edge:tokens={t}", "random") for t in scale.tiles]
    plan += [(0, "edge:zero-tokens", "random"), (1, "edge:one-token", "random")]
    plan += [(scale.tiles[0], f"edge:{m}", m) for m in modes]
    plan += [(scale.tokens[-1], "edge:non-contiguous", "strided")]
    out = []
    for i, (tokens, name, mode) in enumerate(plan):
        s = make(tokens, case_seed(seed, op, i), name, mode)
        s.special, s.empty = mode in ("nan", "inf"), tokens == 0
        s.backward = s.backward and not s.special and (mode != "large" or op in LINEAR_OPS)
        s.noncontiguous = mode == "strided"
        out.append(s)
    return out


def per_op(op: str, build) -> OpCase:
    """An OpCase whose samples come from build(dtype, scale, tokens, gen, name, mode) -> Sample."""
    def generate(dtype: DType, scale: Scale, seed: int) -> list[Sample]:
        def make(tokens, s, name, mode):
            sample = build(dtype, scale, tokens, rng(s), name, mode)
            sample.seed = s
            return sample
        return standard(op, make, scale, seed, MODES.get(op, ("large", "small", "nan")))
    return OpCase(op, generate)


# ----- dense ops -----

def embedding(dtype, sc, T, g, name, mode):
    ids = torch.randint(0, VOCAB, (T,), generator=g)
    if T:
        ids[0], ids[-1] = 0, VOCAB - 1
    w = poison(randn(g, VOCAB, sc.hidden, scale=magnitude(dtype, mode)), mode)
    return single_op("embedding", name, dtype, 0, [Arg("ids", ids, ("tokens",)), Arg("weight", w, param=True)])


def rms_norm(dtype, sc, T, g, name, mode):
    x = poison(randn(g, T, sc.hidden, scale=magnitude(dtype, mode)), mode)
    w = 1 + 0.1 * randn(g, sc.hidden)
    return single_op("rms_norm", name, dtype, 0, [Arg("x", x, ("tokens", sc.hidden)), Arg("weight", w, param=True)])


def linear(dtype, sc, T, g, name, mode):
    x = poison(randn(g, T, sc.hidden, scale=magnitude(dtype, mode)), mode)
    w = randn(g, sc.ffn, sc.hidden, scale=sc.hidden ** -0.5)
    bias = Arg("bias", randn(g, sc.ffn), param=True) if T % 2 else None
    return single_op("linear", name, dtype, 0, [Arg("x", x, ("tokens", sc.hidden)), Arg("weight", w, param=True),
                                                 bias])


def binary(op):
    def build(dtype, sc, T, g, name, mode):
        a = poison(randn(g, T, sc.hidden, scale=magnitude(dtype, mode)), mode)
        b = randn(g, sc.hidden)
        return single_op(op, name, dtype, 0, [Arg("a", a, ("tokens", sc.hidden)), Arg("b", b, param=True)])
    return build


def unary(op, **attrs):
    def build(dtype, sc, T, g, name, mode):
        x = poison(randn(g, T, sc.hidden, scale=magnitude(dtype, mode)), mode)
        return single_op(op, name, dtype, 0, [Arg("x", x, ("tokens", sc.hidden))], **attrs)
    return build


def softmax(dtype, sc, T, g, name, mode):
    x = poison(randn(g, T, sc.experts, scale=magnitude(dtype, mode)), mode)
    return single_op("softmax", name, dtype, 0, [Arg("x", x, ("tokens", sc.experts))], axis=-1)


def attention(dtype, sc, T, g, name, mode):
    heads, kv, d = 4, 2, 8
    batch, seq = (1, T) if T < 2 else (2, max(T // 2, 1))
    q, k, v = (randn(g, batch, seq, n * d, scale=magnitude(dtype, mode) ** 0.5) for n in (heads, kv, kv))
    norm = 1 + 0.1 * randn(g, d) if T % 2 else None
    args = [Arg("q", poison(q, mode), ("batch", "seq", heads * d)), Arg("k", k, ("batch", "seq", kv * d)),
            Arg("v", v, ("batch", "seq", kv * d)), None if norm is None else Arg("q_norm", norm, param=True),
            None if norm is None else Arg("k_norm", norm.clone(), param=True)]
    return single_op("attention", name, dtype, 0, args, num_heads=heads, num_kv_heads=kv, head_dim=d)


def cross_entropy(dtype, sc, T, g, name, mode):
    logits = poison(randn(g, T, VOCAB, scale=magnitude(dtype, mode)), mode)
    targets = torch.randint(0, VOCAB, (T,), generator=g)
    if T > 2:
        targets[1] = -100
    return single_op("cross_entropy", name, dtype, 0, [Arg("logits", logits, ("tokens", VOCAB)),
                                                        Arg("targets", targets, ("tokens",))])


# ----- MoE ops -----

def top_k_indices(g, T: int, sc: Scale) -> torch.Tensor:
    """Distinct experts per token, as a router would pick them."""
    return torch.stack([torch.randperm(sc.experts, generator=g)[:sc.top_k] for _ in range(T)]) if T else \
        torch.zeros(0, sc.top_k, dtype=torch.int64)


def dispatch(dtype, sc, T, g, name, mode):
    x = poison(randn(g, T, sc.hidden, scale=magnitude(dtype, mode)), mode)
    idx = top_k_indices(g, T, sc)
    return single_op("dispatch", name, dtype, 0, [Arg("x", x, ("tokens", sc.hidden)),
                                                   Arg("indices", idx, ("tokens", sc.top_k))],
                     num_experts=sc.experts)


def split_rows(g, rows: int, experts: int) -> torch.Tensor:
    if rows == 0:
        return torch.zeros(experts + 1, dtype=torch.int64)
    cuts = torch.sort(torch.randint(0, rows + 1, (experts - 1,), generator=g)).values
    return torch.cat([torch.tensor([0]), cuts, torch.tensor([rows])])


def grouped_matmul(dtype, sc, T, g, name, mode):
    rows = T * sc.top_k
    x = poison(randn(g, rows, sc.hidden, scale=magnitude(dtype, mode)), mode)
    w = randn(g, sc.experts, sc.ffn, sc.hidden, scale=sc.hidden ** -0.5)
    return single_op("grouped_matmul", name, dtype, 0, [Arg("x", x, ("rows", sc.hidden)),
                                                         Arg("weight", w, param=True),
                                                         Arg("offsets", split_rows(g, rows, sc.experts))])


def swiglu(dtype, sc, T, g, name, mode):
    x = poison(randn(g, T, 2 * sc.ffn, scale=magnitude(dtype, mode)), mode)
    return single_op("swiglu", name, dtype, 0, [Arg("x", x, ("tokens", 2 * sc.ffn))])


def combine(dtype, sc, T, g, name, mode):
    rows = dim_product("tokens", sc.top_k)
    order = torch.sort(top_k_indices(g, T, sc).reshape(-1), stable=True).indices
    y = poison(randn(g, T * sc.top_k, sc.hidden, scale=magnitude(dtype, mode)), mode)
    w = torch.rand(T, sc.top_k, generator=g, dtype=torch.float64)
    return single_op("combine", name, dtype, 0, [Arg("y", y, (rows, sc.hidden)), Arg("order", order, (rows,)),
                                                  Arg("weights", w, ("tokens", sc.top_k))])


MODES = {op: ("large", "small", "nan", "inf") for op in ("silu", "gelu", "add", "mul", "sigmoid")}


def op_cases() -> dict[str, OpCase]:
    cases = [per_op("embedding", embedding), per_op("rms_norm", rms_norm), per_op("linear", linear),
             per_op("add", binary("add")), per_op("mul", binary("mul")), per_op("silu", unary("silu")),
             per_op("sigmoid", unary("sigmoid")), per_op("gelu", unary("gelu", approximate="tanh")),
             per_op("softmax", softmax), per_op("attention", attention), per_op("cross_entropy", cross_entropy),
             per_op("swiglu", swiglu), per_op("combine", combine)]
    with_edges = [("dispatch", dispatch, dispatch_edges), ("grouped_matmul", grouped_matmul, grouped_matmul_edges)]
    for op, build, edges in with_edges:
        base = per_op(op, build)
        cases.append(OpCase(op, lambda d, s, seed, base=base, edges=edges: base.generate(d, s, seed)
                            + edges(d, s, seed)))
    cases.append(ROUTER_CASES)
    return {c.op: c for c in cases}


CASES: dict[str, OpCase] = op_cases() | MODEL_CASES
