"""A Mixtral-style MoE layer written in plain torch (the form users export with torch.onnx.export):
router linear, softmax, top-k, renormalise, then a loop over experts with per-expert nn.Linear
gate/up/down (no `if empty: continue`, which blocks the exporter).
Shapes: T tokens, H hidden, E experts, K top-k, F expert width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Expert(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.gate = nn.Linear(hidden, ffn, bias=False)
        self.up = nn.Linear(hidden, ffn, bias=False)
        self.down = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class TorchMoE(nn.Module):
    def __init__(self, hidden: int, ffn: int, experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList(Expert(hidden, ffn) for _ in range(experts))

    def forward(self, x_TH):
        probs_TE = torch.softmax(self.router(x_TH), dim=-1)
        weights_TK, idx_TK = torch.topk(probs_TE, self.top_k, dim=-1)
        weights_TK = weights_TK / weights_TK.sum(-1, keepdim=True)
        out_TH = torch.zeros_like(x_TH)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(idx_TK == e)
            y = expert(x_TH[token]) * weights_TK[token, slot, None]
            out_TH = out_TH.index_add(0, token, y)
        return out_TH


def export_torch_moe(model: TorchMoE, path, tokens: int = 16):
    """torch.onnx.export with the dynamo exporter and a dynamic token count."""
    x = torch.randn(tokens, model.router.in_features)
    tokens_dim = torch.export.Dim("tokens", min=1)
    torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=({0: tokens_dim},),
                      external_data=False, verbose=False)
    return path
