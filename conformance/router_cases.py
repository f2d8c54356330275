"""The routing cases: the router in each scoring mode, exact ties, every token to one expert, and the
dispatch / grouped_matmul edge cases where experts get no tokens, all of them, or tile-edge counts.

Legend: T tokens, H hidden, E experts, K top-k, R = T*K rows, F output features."""

from __future__ import annotations

import torch

from ..ir import DType
from .sample import Arg, OpCase, Sample, Scale, case_seed, randn, rng, single_op


def variants(sc: Scale) -> dict[str, dict]:
    groups = sc.experts // 2
    return {
        "softmax": dict(top_k=sc.top_k, scoring="softmax"),
        "sigmoid-groups": dict(top_k=sc.top_k, scoring="sigmoid", num_groups=groups, top_groups=2,
                               group_score="top2_sum", scaling=2.5),
        "softmax_topk": dict(top_k=sc.top_k, scoring="softmax_topk"),
        "no-normalize": dict(top_k=sc.top_k, scoring="sigmoid", normalize=False),
    }


def router_sample(dtype: DType, sc: Scale, T: int, seed: int, name: str, variant: str, *, mode: str = "random",
                  weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> Sample:
    g = rng(seed)
    attrs = variants(sc)[variant]
    big = {DType.float16: 100.0}.get(dtype, 1e4) if mode == "large" else 1.0
    x = randn(g, T, sc.hidden, scale=big)
    if mode == "nan" and T:
        x[0, 0] = float("nan")
    w = randn(g, sc.experts, sc.hidden, scale=sc.hidden ** -0.5) if weight is None else weight
    if bias is None and variant == "no-normalize":
        bias = 0.1 * randn(g, sc.experts)
    score_bias = 0.01 * randn(g, sc.experts) if attrs["scoring"] == "sigmoid" else None
    args = [Arg("x", x, ("tokens", sc.hidden)), Arg("weight", w, param=True),
            None if bias is None else Arg("bias", bias, param=True),
            None if score_bias is None else Arg("score_bias", score_bias, param=True, dtype=DType.float32)]
    s = single_op("router", f"{variant}:{name}", dtype, seed, args, **attrs)
    s.special, s.noncontiguous, s.empty = mode == "nan", mode == "strided", T == 0
    s.backward = mode != "nan"
    return s


def tie_weights(sc: Scale, g) -> dict[str, torch.Tensor]:
    """Router weights with exact score ties: all-zero rows (every expert ties), and duplicated rows."""
    dup = randn(g, sc.experts, sc.hidden, scale=sc.hidden ** -0.5)
    dup[1::2] = dup[0::2]          # experts 2i and 2i+1 score the same for every token
    return {"ties-all": torch.zeros(sc.experts, sc.hidden), "ties-pairs": dup}


def router_samples(dtype: DType, sc: Scale, seed: int) -> list[Sample]:
    plan = [(t, f"tokens={t}#{i}", v, "random") for v in variants(sc) for t in sc.tokens for i in range(sc.seeds)]
    plan += [(t, f"tile-edge:tokens={t}", "softmax", "random") for t in sc.tiles]
    plan += [(0, "edge:zero-tokens", "softmax", "random"), (0, "edge:zero-tokens", "sigmoid-groups", "random"),
             (1, "edge:one-token", "sigmoid-groups", "random"),
             (sc.tiles[0], "edge:large", "softmax", "large"), (sc.tiles[0], "edge:large", "sigmoid-groups", "large"),
             (sc.tiles[0], "edge:nan", "softmax", "nan"), (sc.tokens[-1], "edge:non-contiguous", "softmax", "strided")]
    out = [router_sample(dtype, sc, t, case_seed(seed, "router", i), name, v, mode=m)
           for i, (t, name, v, m) in enumerate(plan)]
    g = rng(case_seed(seed, "router-ties", 0))
    for tie, w in tie_weights(sc, g).items():
        for v in ("softmax", "sigmoid-groups"):
            out.append(router_sample(dtype, sc, sc.tiles[0], case_seed(seed, tie, 0), f"edge:{tie}", v, weight=w))
    one = torch.zeros(sc.experts)
    one[sc.experts // 2] = 50.0    # every token's first choice is the middle expert
    for v in ("softmax", "no-normalize"):
        out.append(router_sample(dtype, sc, sc.tiles[0], case_seed(seed, "router-one", 0), "edge:all-to-one-expert",
                                 v, bias=one))
    return out


def dispatch_edges(dtype: DType, sc: Scale, seed: int) -> list[Sample]:
    g = rng(seed + 17)
    T = sc.tiles[-1]
    x = randn(g, T, sc.hidden)
    odd = torch.arange(1, sc.experts, 2)       # only odd experts: the even ones get no tokens
    sparse = torch.stack([odd[torch.randperm(len(odd), generator=g)[:sc.top_k]] for _ in range(T)])
    to_one = torch.full((T, 1), sc.experts // 2)
    first_one = torch.stack([torch.tensor([sc.experts // 2, (t % (sc.experts - 1) + sc.experts // 2 + 1)
                                           % sc.experts]) for t in range(T)])[:, :sc.top_k]
    out = []
    for name, idx in (("edge:empty-experts", sparse), ("edge:all-to-one-expert-k1", to_one),
                      ("edge:all-first-choice-one-expert", first_one)):
        out.append(single_op("dispatch", name, dtype, seed, [Arg("x", x, ("tokens", sc.hidden)),
                                                             Arg("indices", idx, ("tokens", idx.shape[1]))],
                             num_experts=sc.experts))
    return out


def grouped_matmul_edges(dtype: DType, sc: Scale, seed: int) -> list[Sample]:
    g = rng(seed + 29)
    E = sc.experts
    tile = (list(sc.tiles) * E)[:E]
    empty = [0] * E
    empty[1], empty[-1], empty[E // 2] = 5, 3, 7      # the first expert and others between get no rows
    layouts = {"edge:empty-experts": empty,
               "edge:all-rows-one-expert": [0] * (E // 2) + [33] + [0] * (E - E // 2 - 1),
               "edge:segments-at-tile-edges": tile}
    out = []
    for name, counts in layouts.items():
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.tensor(counts).cumsum(0)])
        rows = int(offsets[-1])
        x = randn(g, rows, sc.hidden)
        w = randn(g, E, sc.ffn, sc.hidden, scale=sc.hidden ** -0.5)
        out.append(single_op("grouped_matmul", name, dtype, seed, [Arg("x", x, ("rows", sc.hidden)),
                                                                   Arg("weight", w, param=True),
                                                                   Arg("offsets", offsets)]))
    return out


ROUTER_CASES = OpCase("router", router_samples)
