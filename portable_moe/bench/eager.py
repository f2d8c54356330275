"""The torch MoE baselines, the one home of them, written independently of the IR's meanings: the Hugging
Face Mixtral-style loop over experts (one-hot mask, gather, MLP, index_add), a sorted form (one sort by
expert, a loop of per-expert matmuls on contiguous slices), torch._grouped_mm (one grouped GEMM per
projection), and transformers' own experts implementations (eager, grouped_mm, batched_mm) behind the same
router. Benchmarks time them side by side; tests use the loop as an independent oracle.

Legend: T tokens, H hidden, F expert FFN width, E experts, K top-k, R = T*K routed rows."""

from __future__ import annotations

from collections.abc import Callable

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


def grouped_mm(cfg: MoEConfig, p: dict, x_TH: torch.Tensor) -> torch.Tensor:
    """Rows sorted by expert, then torch._grouped_mm for gate_up and for down (what a torch user without a
    fused kernel has; float32 on the CPU, and bfloat16 wherever its strides are 16-byte multiples)."""
    weights_TK, experts_TK = route(cfg, p, x_TH)
    order_R = experts_TK.flatten().argsort(stable=True)
    token_R = order_R // cfg.top_k
    offs_E = torch.bincount(experts_TK.flatten(), minlength=cfg.experts).cumsum(0).to(torch.int32)
    gate_RF, up_RF = torch._grouped_mm(x_TH[token_R], p["experts.gate_up"].transpose(1, 2), offs=offs_E).chunk(2, -1)
    y_RH = torch._grouped_mm(F.silu(gate_RF) * up_RF, p["experts.down"].transpose(1, 2), offs=offs_E)
    out_TH = torch.zeros_like(x_TH).index_add_(0, token_R, y_RH * weights_TK.flatten()[order_R, None])
    return out_TH + shared_expert(cfg, p, x_TH) if cfg.shared_ffn else out_TH


def transformers_experts(implementation: str):
    """A baseline factory: transformers' MixtralExperts with the given experts implementation, holding our
    weights (same [E, 2F, H] / [E, H, F] layout, not copied), behind the same router and shared expert."""
    def make(cfg: MoEConfig, p: dict) -> Callable[[torch.Tensor], torch.Tensor]:
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralExperts

        hf = MixtralConfig(hidden_size=cfg.hidden, intermediate_size=cfg.expert_ffn, num_local_experts=cfg.experts,
                           num_experts_per_tok=cfg.top_k)
        hf._experts_implementation = implementation
        with torch.device("meta"):
            experts = MixtralExperts(hf)
        experts.gate_up_proj = torch.nn.Parameter(p["experts.gate_up"], requires_grad=False)
        experts.down_proj = torch.nn.Parameter(p["experts.down"], requires_grad=False)

        def forward(x_TH: torch.Tensor) -> torch.Tensor:
            weights_TK, experts_TK = route(cfg, p, x_TH)
            out_TH = experts(x_TH, experts_TK, weights_TK)
            return out_TH + shared_expert(cfg, p, x_TH) if cfg.shared_ffn else out_TH
        return forward
    return make


def plain(fn):
    """A baseline factory for a function of (cfg, params, x)."""
    return lambda cfg, p: lambda x_TH: fn(cfg, p, x_TH)


# name -> factory(cfg, params) -> forward(x): every baseline the layer benchmark times beside the backends
EAGER = {"torch-loop": plain(eager_loop), "torch-sorted": plain(eager_sorted), "torch._grouped_mm": plain(grouped_mm),
         **{f"hf-{i}": transformers_experts(i) for i in ("eager", "grouped_mm", "batched_mm")}}
