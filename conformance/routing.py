"""Which tokens' routing the check can hold a backend to.

A router picks the top-k of its selection scores. Where two scores that decide the pick (the j-th
and (j+1)-th best for j < k, and likewise for the groups of group-limited routing) differ by less
than the dtype can resolve, a correct backend may pick either, so such a token is *excluded* from
the routing and output comparisons (its rows also get a zero cotangent in the backward check) and
the count is reported. Everything is recomputed in float64 from the exact inputs.

Resolution: a logit x.w carries an error of about rel * sqrt(sum_h (x_h w_h)^2) (independent
roundings of the terms; we allow 3 standard deviations), with rel the float32 rtol of the tolerance
table when x is a graph input (the op computes logits in float32 from exact inputs) and the graph
dtype's rtol when x was itself computed upstream. It maps to
the scores through their derivative (softmax: s * 2 * max error; sigmoid: s(1-s) * error), plus
float32's smallest normal, below which scores underflow to exact zeros. Two choices are ambiguous
when their gap is below the sum of their errors. Exact float64 ties (gap 0) are NOT excluded: the
op's meaning breaks them towards the lower expert index, and that is checked. Tokens whose scores
are NaN are excluded from the index comparison only (their weights must come out NaN).

Legend: T tokens, H hidden, E experts, G groups, B batch, S sequence."""

from __future__ import annotations

import torch

from ..ir import DType, Graph, Node
from ..ir.meanings import TORCH_DTYPES, group_mask
from ..runtime.tolerance import TOLERANCES

TINY = torch.finfo(torch.float32).tiny


def selection(node: Node, env: dict, rel: float):
    """float64 selection scores [T, E], their error bound [T, E], and the group scores and errors [T, G]."""
    x, w, bias, score_bias = (None if i is None else env[i] for i in node.inputs)
    a = node.attrs
    x_TH, w_EH = x.double().reshape(-1, x.shape[-1]), w.double()
    logits_TE = x_TH @ w_EH.T + (0 if bias is None else bias.double())
    dlogit_TE = 3 * rel * ((x_TH * x_TH) @ (w_EH * w_EH).T).sqrt() + (0 if bias is None else rel * bias.double().abs())
    if a["scoring"] == "softmax":
        scores_TE = torch.softmax(logits_TE, -1)
        err_TE = scores_TE * 2 * dlogit_TE.amax(-1, keepdim=True)
    elif a["scoring"] == "sigmoid":
        scores_TE = torch.sigmoid(logits_TE)
        err_TE = scores_TE * (1 - scores_TE) * dlogit_TE
    else:
        scores_TE, err_TE = logits_TE, dlogit_TE
    err_TE = err_TE + TINY
    sel_TE = scores_TE if score_bias is None else scores_TE + score_bias.double()
    if a["num_groups"] == 1:
        return sel_TE, err_TE, None, None
    n = 1 if a["group_score"] == "max" else 2
    grouped = sel_TE.view(sel_TE.shape[0], a["num_groups"], sel_TE.shape[1] // a["num_groups"])
    group_TG = grouped.topk(n, dim=-1).values.sum(-1)
    gerr_TG = n * err_TE.view_as(grouped).amax(-1)
    masked_TE = group_mask(sel_TE, a["num_groups"], a["top_groups"], a["group_score"])
    return masked_TE, err_TE, group_TG, gerr_TG


def near_ties(scores: torch.Tensor, err: torch.Tensor, k: int) -> torch.Tensor:
    """[T] True where one of the first k decisions (j-th vs (j+1)-th best) is within the error bound."""
    if scores.shape[0] == 0 or k >= scores.shape[1]:
        return torch.zeros(scores.shape[0], dtype=torch.bool)
    top, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    e = err.gather(-1, order)[:, :k + 1]
    top = top[:, :k + 1]
    gap = top[:, :-1] - top[:, 1:]
    close = (gap > 0) & (gap < e[:, :-1] + e[:, 1:]) & torch.isfinite(gap)
    return close.any(-1)


def router_ambiguity(graph: Graph, env: dict, dtype: DType) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """router node name -> (near-tie tokens [T], NaN tokens [T]) from the float64 values in env."""
    inputs = {v.name for v in graph.inputs}
    out = {}
    for node in graph.nodes:
        if node.op != "router":
            continue
        upstream = DType.float32 if node.inputs[0] in inputs and dtype != DType.float64 else dtype
        rel = TOLERANCES[TORCH_DTYPES[upstream.value]].rtol
        sel_TE, err_TE, group_TG, gerr_TG = selection(node, env, rel)
        amb_T = near_ties(sel_TE, err_TE, node.attrs["top_k"])
        if group_TG is not None:
            amb_T |= near_ties(group_TG, gerr_TG, node.attrs["top_groups"])
        nan_T = torch.isnan(sel_TE).any(-1) if sel_TE.numel() else amb_T.clone()
        out[node.name] = (amb_T & ~nan_T, nan_T)
    return out


def keep_masks(kind: str, graph: Graph, want: list, ambiguity: dict) -> tuple[list, int]:
    """Per graph output, a bool mask (broadcastable to it) of the elements to compare; and the number
    of excluded tokens."""
    keep = [None] * len(want)
    if not ambiguity:
        return keep, 0
    amb_T = torch.stack([a for a, _ in ambiguity.values()]).any(0)
    nan_T = torch.stack([n for _, n in ambiguity.values()]).any(0)
    if kind == "op":
        keep[0] = ~amb_T[:, None]
        keep[1] = ~(amb_T | nan_T)[:, None]
        return keep, int(amb_T.sum())
    if kind == "layer":
        return [~amb_T[:, None]], int(amb_T.sum())
    batch, seq = want[0].shape[:2]
    amb_BS = amb_T.view(batch, seq).cummax(dim=1).values   # causal: later positions see the token
    keep[0] = ~amb_BS[..., None]
    if len(want) > 1:
        keep[1] = torch.tensor(not bool(amb_BS.any()))
    return keep, int(amb_BS.sum())
