"""The router, one program per token: fp32 logits, scores (the IR's scoring), selection bias, group-limited
masking, top-k (ties to the lower index), renormalisation, scaling. Legend: H hidden, E experts, K top-k, G groups."""

import triton
import triton.language as tl


@triton.jit
def pick_next(values, free, index, NONE: tl.constexpr):
    """The index of the largest free value; NaN ranks first, as in a descending torch.sort."""
    nan = (values != values) & free
    cand = tl.where(free & ~nan, values, float("-inf"))
    best = tl.min(tl.where((cand == tl.max(cand, axis=0)) & free & ~nan, index, NONE), axis=0)
    return tl.where(tl.max(nan.to(tl.int32), axis=0) > 0, tl.min(tl.where(nan, index, NONE), axis=0), best)


@triton.jit
def router_kernel(x_ptr, w_ptr, bias_ptr, score_bias_ptr, weights_ptr, idx_ptr, logits_ptr, H, scaling,
                  E: tl.constexpr, TOP_K: tl.constexpr, SCORING: tl.constexpr, NUM_GROUPS: tl.constexpr,
                  TOP_GROUPS: tl.constexpr, GROUP_TOP2: tl.constexpr, NORMALIZE: tl.constexpr,
                  HAS_BIAS: tl.constexpr, HAS_SCORE_BIAS: tl.constexpr,
                  BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_G: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, BLOCK_E)
    e_ok = e < E
    logits_E = tl.full([BLOCK_E], 0, dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)
        h_ok = h < H
        x_H = tl.load(x_ptr + t * H + h, mask=h_ok, other=0.0).to(tl.float32)
        w_EH = tl.load(w_ptr + e[:, None] * H + h[None, :], mask=e_ok[:, None] & h_ok[None, :], other=0.0)
        logits_E += tl.sum(w_EH.to(tl.float32) * x_H[None, :], axis=1)
    if HAS_BIAS:
        logits_E += tl.load(bias_ptr + e, mask=e_ok, other=0.0).to(tl.float32)
    tl.store(logits_ptr + t * E + e, logits_E, mask=e_ok)

    neg_inf = float("-inf")
    scores_E = logits_E
    if SCORING == "softmax":
        z = tl.where(e_ok, logits_E, neg_inf)
        p = tl.exp(z - tl.max(z, axis=0))
        scores_E = p / tl.sum(p, axis=0)
    elif SCORING == "sigmoid":
        scores_E = tl.sigmoid(logits_E)
    sel_E = scores_E
    if HAS_SCORE_BIAS:
        sel_E += tl.load(score_bias_ptr + e, mask=e_ok, other=0.0).to(tl.float32)
    sel_E = tl.where(e_ok, sel_E, neg_inf)

    if NUM_GROUPS > 1:
        per_group: tl.constexpr = E // NUM_GROUPS
        g = tl.arange(0, BLOCK_G)
        group_G = tl.full([BLOCK_G], neg_inf, dtype=tl.float32)
        for gi in tl.static_range(NUM_GROUPS):
            in_g = (e // per_group == gi) & e_ok
            v = tl.where(in_g, sel_E, neg_inf)
            best = tl.max(v, axis=0)
            if GROUP_TOP2:
                first = tl.min(tl.where((v == best) & in_g, e, BLOCK_E), axis=0)
                best += tl.max(tl.where(e == first, neg_inf, v), axis=0)
            group_G = tl.where(g == gi, best, group_G)
        kept_G = g < 0
        for _ in tl.static_range(TOP_GROUPS):
            kept_G = kept_G | (g == pick_next(group_G, ~kept_G & (g < NUM_GROUPS), g, BLOCK_G))
        kept_E = tl.sum(tl.where((e[:, None] // per_group == g[None, :]) & kept_G[None, :], 1, 0), axis=1) > 0
        sel_E = tl.where(kept_E & e_ok, sel_E, neg_inf)

    k = tl.arange(0, BLOCK_K)
    taken_E = e < 0
    idx_K, w_K = tl.full([BLOCK_K], 0, dtype=tl.int64), tl.full([BLOCK_K], 0, dtype=tl.float32)
    for ki in tl.static_range(TOP_K):
        pick = pick_next(sel_E, ~taken_E & e_ok, e, BLOCK_E)
        taken_E = taken_E | (e == pick)
        idx_K = tl.where(k == ki, pick.to(tl.int64), idx_K)
        w_K = tl.where(k == ki, tl.sum(tl.where(e == pick, scores_E, 0.0), axis=0), w_K)
    k_ok = k < TOP_K
    if SCORING == "softmax_topk":
        z = tl.where(k_ok, w_K, neg_inf)
        p = tl.exp(z - tl.max(z, axis=0))
        w_K = p / tl.sum(p, axis=0)
    elif NORMALIZE:
        w_K = w_K / (tl.sum(tl.where(k_ok, w_K, 0.0), axis=0) + 1e-20)
    w_K = w_K * scaling
    tl.store(weights_ptr + t * TOP_K + k, w_K.to(weights_ptr.dtype.element_ty), mask=k_ok)
    tl.store(idx_ptr + t * TOP_K + k, idx_K, mask=k_ok)
