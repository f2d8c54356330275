"""The executable meaning of every op (beside its schema in ops.py), in torch eager, with autograd.
Shapes: T tokens, H hidden, E experts, K top-k, R = T*K dispatched rows, V vocabulary. Low-precision
inputs accumulate in float32; float64 stays float64, so the same code is the float64 oracle.
`run_graph` gives a whole graph its meaning; the reference backend is a plug-in around it."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .errors import IRError
from .graph import Graph

TORCH_DTYPES = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float8_e4m3fn": torch.float8_e4m3fn, "float8_e4m3fnuz": torch.float8_e4m3fnuz,
    "int64": torch.int64, "int32": torch.int32,
}
"""The torch dtype of each IR dtype (DType.value)."""


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def embedding(ids, weight):
    if ids.numel() and (ids.min() < 0 or ids.max() >= weight.shape[0]):
        raise IRError(f"ids out of range [0, {weight.shape[0]})", op="embedding")
    return F.embedding(ids, weight)


def rms_norm(x, weight, *, eps):
    x32 = x.to(acc_dtype(x))
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def linear(x, weight, bias=None):
    return F.linear(x, weight, bias)


def add(a, b):
    return a + b


def mul(a, b):
    return a * b


def silu(x):
    return F.silu(x)


def sigmoid(x):
    return torch.sigmoid(x)


def gelu(x, *, approximate):
    return F.gelu(x, approximate=approximate)


def softmax(x, *, axis):
    return torch.softmax(x.to(acc_dtype(x)), dim=axis).to(x.dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(x_BSND, theta: float):
    seq, dim = x_BSND.shape[1], x_BSND.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=x_BSND.device) / dim)
    freqs = torch.outer(torch.arange(seq, dtype=torch.float64, device=x_BSND.device), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1).to(x_BSND.dtype)[None, :, None, :]
    return x_BSND * emb.cos() + rotate_half(x_BSND) * emb.sin()


def head_norm(x_BSND, weight, eps):
    return rms_norm(x_BSND, weight, eps=eps) if weight is not None else x_BSND


def attention(q, k, v, q_norm=None, k_norm=None, *, num_heads, num_kv_heads, head_dim, causal, rope_theta, eps):
    batch, seq = q.shape[:2]
    acc = acc_dtype(q)
    q_BSND = head_norm(q.reshape(batch, seq, num_heads, head_dim), q_norm, eps).to(acc)
    k_BSND = head_norm(k.reshape(batch, seq, num_kv_heads, head_dim), k_norm, eps).to(acc)
    v_BSND = v.reshape(batch, seq, num_kv_heads, head_dim).to(acc)
    if rope_theta:
        q_BSND, k_BSND = rope(q_BSND, rope_theta), rope(k_BSND, rope_theta)
    group = num_heads // num_kv_heads
    k_BSND = k_BSND.repeat_interleave(group, dim=2)
    v_BSND = v_BSND.repeat_interleave(group, dim=2)
    scores = torch.einsum("bqnd,bknd->bnqk", q_BSND, k_BSND) / math.sqrt(head_dim)
    if causal:
        mask = torch.ones(seq, seq, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    out = torch.einsum("bnqk,bknd->bqnd", torch.softmax(scores, dim=-1), v_BSND)
    return out.reshape(batch, seq, num_heads * head_dim).to(q.dtype)


def stable_topk(x, k: int):
    """Top-k along the last dim; ties go to the lower index (a stable descending sort keeps index order)."""
    order = torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k]
    return x.gather(-1, order), order


def group_mask(selection_TE, num_groups: int, top_groups: int, group_score: str):
    """Keeps the experts of the top_groups best groups; masks the rest with -inf."""
    tokens, experts = selection_TE.shape
    grouped = selection_TE.view(tokens, num_groups, experts // num_groups)
    if group_score == "max":
        score_TG = grouped.max(-1).values
    else:
        score_TG = stable_topk(grouped, 2)[0].sum(-1)
    _, keep = stable_topk(score_TG, top_groups)
    mask_TG = torch.zeros_like(score_TG, dtype=torch.bool).scatter(1, keep, True)
    mask_TE = mask_TG.unsqueeze(-1).expand_as(grouped).reshape(tokens, experts)
    return selection_TE.masked_fill(~mask_TE, float("-inf"))


def router_scores(x_TH, weight, bias, scoring: str):
    """(logits, scores) [T, E] in x_TH's dtype: the part of the router that gradients flow through."""
    logits_TE = F.linear(x_TH, weight.to(x_TH.dtype), None if bias is None else bias.to(x_TH.dtype))
    if scoring == "softmax":
        return logits_TE, torch.softmax(logits_TE, dim=-1)
    if scoring == "sigmoid":
        return logits_TE, torch.sigmoid(logits_TE)
    return logits_TE, logits_TE


def routing_weights(scores_TE, idx_TK, *, scoring: str, normalize: bool, scaling: float):
    """The weights of the picked experts [T, K]: gathered scores, softmaxed or renormalised, scaled."""
    weights_TK = scores_TE.gather(-1, idx_TK)
    if scoring == "softmax_topk":
        weights_TK = torch.softmax(weights_TK, dim=-1)
    elif normalize:
        weights_TK = weights_TK / (weights_TK.sum(-1, keepdim=True) + 1e-20)
    return weights_TK * scaling


def router(x, weight, bias=None, score_bias=None, *, top_k, scoring, num_groups, top_groups, group_score,
           normalize, scaling):
    lead = x.shape[:-1]
    x_TH = x.reshape(-1, x.shape[-1]).to(acc_dtype(x))
    logits_TE, scores_TE = router_scores(x_TH, weight, bias, scoring)
    selection_TE = scores_TE if score_bias is None else scores_TE + score_bias.to(x_TH.dtype)
    if num_groups > 1:
        selection_TE = group_mask(selection_TE, num_groups, top_groups, group_score)
    _, idx_TK = stable_topk(selection_TE.detach(), top_k)
    weights_TK = routing_weights(scores_TE, idx_TK, scoring=scoring, normalize=normalize, scaling=scaling)
    return (weights_TK.to(x.dtype).reshape(*lead, top_k), idx_TK.reshape(*lead, top_k),
            logits_TE.reshape(*lead, weight.shape[0]))


def dispatch(x, indices, *, num_experts):
    top_k = indices.shape[-1]
    flat_R = indices.reshape(-1)
    if flat_R.numel() and (flat_R.min() < 0 or flat_R.max() >= num_experts):
        raise IRError(f"expert index out of range [0, {num_experts})", op="dispatch")
    order_R = torch.sort(flat_R, stable=True).indices
    rows_RH = x.reshape(-1, x.shape[-1])[order_R // top_k]
    counts_E = torch.bincount(flat_R, minlength=num_experts)
    offsets = torch.cat([counts_E.new_zeros(1), counts_E.cumsum(0)])
    return rows_RH, offsets, order_R


def check_offsets(bounds: list[int], rows: int, experts: int, node: str | None = None):
    """grouped_matmul's offsets must split its rows over the experts."""
    if len(bounds) != experts + 1 or bounds[0] != 0 or bounds[-1] != rows or bounds != sorted(bounds):
        raise IRError(f"offsets {bounds[:8]}... are not a non-decreasing split of {rows} rows over {experts} "
                      "experts", node, "grouped_matmul")


def grouped_matmul(x, weight, offsets):
    bounds = offsets.tolist()
    check_offsets(bounds, x.shape[0], weight.shape[0])
    acc = acc_dtype(x)
    pieces = [F.linear(x[a:b].to(acc), w.to(acc)) for a, b, w in zip(bounds, bounds[1:], weight.unbind(0))]
    if not pieces:
        return x.new_zeros(0, weight.shape[1])
    return torch.cat(pieces).to(x.dtype)


def swiglu(x):
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def combine(y, order, weights):
    top_k = weights.shape[-1]
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    acc = acc_dtype(y)
    y_TKH = y[inverse].to(acc).view(-1, top_k, y.shape[-1])
    w_TK = weights.reshape(-1, top_k).to(acc)
    out = y_TKH[:, 0] * w_TK[:, :1]
    for k in range(1, top_k):
        out = out + y_TKH[:, k] * w_TK[:, k:k + 1]
    return out.to(y.dtype).reshape(*weights.shape[:-1], y.shape[-1])


def cross_entropy(logits, targets, *, ignore_index):
    flat = logits.reshape(-1, logits.shape[-1]).to(acc_dtype(logits))
    return F.cross_entropy(flat, targets.reshape(-1), ignore_index=ignore_index).to(logits.dtype)


OPS = {name: fn for name, fn in globals().items() if name in {
    "embedding", "rms_norm", "linear", "add", "mul", "silu", "sigmoid", "gelu", "softmax", "attention",
    "router", "dispatch", "grouped_matmul", "swiglu", "combine", "cross_entropy"}}


def run_graph(graph: Graph, inputs: Mapping, params: Mapping, env: dict | None = None) -> list:
    """Interprets the graph node by node; `env` (if given) receives every intermediate value."""
    env = {} if env is None else env
    env.update(inputs)
    env.update(params)
    for node in graph.nodes:
        args = [None if i is None else env[i] for i in node.inputs]
        result = OPS[node.op](*args, **node.attrs)
        results = result if isinstance(result, tuple) else (result,)
        env.update((v.name, r) for v, r in zip(node.outputs, results))
    return [env[o] for o in graph.outputs]
