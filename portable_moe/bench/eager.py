"""The torch eager MoE baseline, written independently of the IR's meanings, in two forms: the Hugging
Face Mixtral-style loop over experts (one-hot mask, gather, MLP, index_add) and a sorted form (one sort
by expert, contiguous per-expert slices). Benchmarks time it; tests use it as an independent oracle.

Legend: T tokens, H hidden, F expert FFN width, E experts, K top-k, R = T*K routed rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import MoEConfig


def route(cfg: MoEConfig, p: dict, x_TH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Router in fp32 (float64 stays float64), as Hugging Face MoE blocks do: (weights_TK, experts_TK)."""
    acc = torch.float64 if x_TH.dtype == torch.float64 else torch.float32
    bias = p.get("router.bias")
    logits_TE = F.linear(x_TH.to(acc), p["router.weight"].to(acc), None if bias is None else bias.to(acc))
    scores_TE = {"softmax": torch.softmax(logits_TE, -1), "sigmoid": torch.sigmoid(logits_TE)}.get(
        cfg.scoring, logits_TE)
    pick_TE = scores_TE + p["router.score_bias"].to(acc) if "router.score_bias" in p else scores_TE
    if cfg.num_groups > 1:
        pick_TGe = pick_TE.view(len(x_TH), cfg.num_groups, -1)
        group_TG = pick_TGe.max(-1).values if cfg.group_score == "max" else pick_TGe.topk(2, -1).values.sum(-1)
        keep_TG = torch.zeros_like(group_TG, dtype=torch.bool).scatter(1, group_TG.topk(cfg.top_groups, -1).indices,
                                                                        True)
        pick_TE = pick_TGe.masked_fill(~keep_TG.unsqueeze(-1), float("-inf")).view_as(pick_TE)
    experts_TK = pick_TE.topk(cfg.top_k, -1).indices
    weights_TK = scores_TE.gather(1, experts_TK)
    if cfg.scoring == "softmax_topk":
        weights_TK = torch.softmax(weights_TK, -1)
    elif cfg.normalize:
        weights_TK = weights_TK / (weights_TK.sum(-1, keepdim=True) + 1e-20)
    return (weights_TK * cfg.scaling).to(x_TH.dtype), experts_TK


def expert_mlp(x_NH: torch.Tensor, gate_up_2FH: torch.Tensor, down_HF: torch.Tensor) -> torch.Tensor:
    gate_NF, up_NF = F.linear(x_NH, gate_up_2FH).chunk(2, -1)
    return F.linear(F.silu(gate_NF) * up_NF, down_HF)


def shared_expert(cfg: MoEConfig, p: dict, x_TH: torch.Tensor) -> torch.Tensor:
    y_TH = expert_mlp(x_TH, p["shared.gate_up"], p["shared.down"])
    return y_TH * torch.sigmoid(F.linear(x_TH, p["shared.gate"])) if cfg.shared_gate else y_TH


def eager_loop(cfg: MoEConfig, p: dict, x_TH: torch.Tensor) -> torch.Tensor:
    """Hugging Face style: one-hot mask, then for each expert that got tokens, gather, MLP, index_add."""
    weights_TK, experts_TK = route(cfg, p, x_TH)
    out_TH = torch.zeros_like(x_TH)
    mask_EKT = F.one_hot(experts_TK, cfg.experts).permute(2, 1, 0)
    for e in (mask_EKT.sum((1, 2)) > 0).nonzero().flatten().tolist():
        k_N, t_N = torch.where(mask_EKT[e])
        y_NH = expert_mlp(x_TH[t_N], p["experts.gate_up"][e], p["experts.down"][e])
        out_TH.index_add_(0, t_N, y_NH * weights_TK[t_N, k_N, None])
    return out_TH + shared_expert(cfg, p, x_TH) if cfg.shared_ffn else out_TH


def eager_sorted(cfg: MoEConfig, p: dict, x_TH: torch.Tensor) -> torch.Tensor:
    """Sort the (token, k) pairs by expert once, run each expert on a contiguous slice, scatter-add back."""
    weights_TK, experts_TK = route(cfg, p, x_TH)
    order_R = experts_TK.flatten().argsort(stable=True)
    token_R = order_R // cfg.top_k
    counts = torch.bincount(experts_TK.flatten(), minlength=cfg.experts).tolist()
    rows = x_TH[token_R].split(counts)
    ys = [expert_mlp(r, gu, d) for r, gu, d in zip(rows, p["experts.gate_up"].unbind(0), p["experts.down"].unbind(0))
          if len(r)]
    y_RH = torch.cat(ys) * weights_TK.flatten()[order_R, None]
    out_TH = torch.zeros_like(x_TH).index_add_(0, token_R, y_RH)
    return out_TH + shared_expert(cfg, p, x_TH) if cfg.shared_ffn else out_TH


EAGER = {"torch-loop": eager_loop, "torch-sorted": eager_sorted}
