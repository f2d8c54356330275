"""The training model for a portable_moe.models config, split for expert parallelism: the dense part
(embedding, attention, norms, routers, shared experts, LM head) is replicated and data-parallel; each
MoE layer's experts live only on the ranks the placement names. Same parameter names and the same op
meanings (the reference backend's ops) as build_model(cfg, with_loss=True), so a single-process run
of that graph is the oracle. Expert parameters are held per expert: '<layer>.moe.experts.gate_up/<e>'.

Legend: B sequences, S positions, T = B*S tokens, H hidden, E experts, K top-k, L layers."""

from __future__ import annotations

import torch

from .. import compile as pm_compile
from ..ir import meanings as ops
from ..models import MoEConfig, build_model, expert_ffn_graph, init_params
from .expert_parallel import ExpertParallel

EXPERT_KINDS = ("gate_up", "down")


def expert_name(layer: int, kind: str, expert: int) -> str:
    return f"layers.{layer}.moe.experts.{kind}/{expert}"


def split_name(name: str) -> tuple[str, int]:
    """'layers.0.moe.experts.down/5' -> ('layers.0.moe.experts.down', 5)."""
    base, _, e = name.rpartition("/")
    return base, int(e)


class LocalCompute:
    """The rank's expert FFN, compiled by portable_moe.compile for its backend, one executable per number
    of hosted experts (static weight shapes); a backend that cannot take it falls back to the reference
    and `fallback_reason` says why."""

    def __init__(self, cfg: MoEConfig, backend: str, device: str):
        self.cfg, self.requested, self.device = cfg, backend, device
        self.backend, self.fallback_reason = backend, ""
        self.cache: dict[int, torch.nn.Module] = {}

    def module(self, slots: int) -> torch.nn.Module:
        if slots not in self.cache:
            graph = expert_ffn_graph(self.cfg.hidden, self.cfg.expert_ffn, self.cfg.dt, slots)
            try:
                if self.fallback_reason:
                    raise RuntimeError(self.fallback_reason)
                self.cache[slots] = pm_compile(graph, {}, device=self.device, backend=self.backend)
                self.backend = "+".join(sorted(set(self.cache[slots].placement().values())))
            except Exception as e:  # noqa: BLE001 - any backend failure falls back, and the report says why
                self.fallback_reason = self.fallback_reason or f"{self.requested}: {type(e).__name__}: {str(e)[:200]}"
                self.backend = "reference"
                self.cache[slots] = pm_compile(graph, {}, device=self.device, backend="reference")
        return self.cache[slots]

    def __call__(self, x, gate_up, down, offsets):
        return self.module(gate_up.shape[0])(x, gate_up, down, offsets)


def local_compute(cfg: MoEConfig, backend: str, device: str) -> LocalCompute:
    compute = LocalCompute(cfg, backend, device)
    compute.module(1)  # compile now, so a missing backend shows in the report from step 0
    return compute


class TrainModel:
    """One rank's model: every tensor (dense replica, hosted experts, routing bias) on `device`, the
    rank's own device, so activations, gradients and optimizer state follow it there."""

    def __init__(self, cfg: MoEConfig, full_params: dict[str, torch.Tensor], hosts_LEW: torch.Tensor, rank: int,
                 device: torch.device):
        dense = {n: t for n, t in full_params.items()
                 if ".moe.experts." not in n and not n.endswith("router.score_bias")}
        experts = {expert_name(layer, kind, e): full_params[f"layers.{layer}.moe.experts.{kind}"][e]
                   for layer, e in torch.nonzero(hosts_LEW[:, :, rank]).tolist() for kind in EXPERT_KINDS}
        self._hold(cfg, rank, device, dense, experts, torch.zeros(cfg.layers, cfg.experts))

    @classmethod
    def from_tensors(cls, cfg: MoEConfig, rank: int, device: torch.device, dense: dict, experts: dict,
                     score_bias: torch.Tensor):
        self = cls.__new__(cls)
        self._hold(cfg, rank, device, dense, experts, score_bias)
        return self

    def _hold(self, cfg, rank, device, dense, experts, score_bias):
        self.cfg, self.rank, self.device = cfg, rank, torch.device(device)
        self.score_bias = score_bias.to(self.device, torch.float32, copy=True)
        self.dense = {n: self.leaf(t) for n, t in dense.items()}
        self.experts = {n: self.leaf(t) for n, t in experts.items()}

    def leaf(self, t: torch.Tensor) -> torch.Tensor:
        """A trainable copy of t on this rank's device."""
        return t.detach().to(self.device, copy=True).requires_grad_(True)

    def params(self) -> dict[str, torch.Tensor]:
        return self.dense | self.experts

    def stacked(self, layer: int):
        def get(slots: list[int]):
            return tuple(torch.stack([self.experts[expert_name(layer, k, e)] for e in slots]) for k in EXPERT_KINDS)
        return get

    def forward(self, ids_BS, targets_BS, eps: list[ExpertParallel], comm, use_bias: bool):
        """-> (cross-entropy, aux_loss, z_loss, counts_LE of this rank's routed pairs)."""
        c, p = self.cfg, self.dense
        h = ops.embedding(ids_BS, p["embed.weight"])
        aux, z, counts = h.new_zeros(()), h.new_zeros(()), []
        for i in range(c.layers):
            pre = f"layers.{i}."
            h = h + self.attention(ops.rms_norm(h, p[f"{pre}attn_norm.weight"], eps=c.eps), pre + "attn.")
            x_TH = ops.rms_norm(h, p[f"{pre}ffn_norm.weight"], eps=c.eps).reshape(-1, c.hidden)
            out_TH, a, zl, cnt = self.moe(x_TH, i, eps[i], comm, use_bias)
            h = h + out_TH.reshape(h.shape)
            aux, z = aux + a, z + zl
            counts.append(cnt)
        h = ops.rms_norm(h, p["final_norm.weight"], eps=c.eps)
        logits = ops.linear(h, p["lm_head.weight"])
        return ops.cross_entropy(logits, targets_BS, ignore_index=-100), aux, z, torch.stack(counts)

    def attention(self, x, pre: str):
        c, p = self.cfg, self.dense
        q, k, v = (ops.linear(x, p[f"{pre}{n}.weight"]) for n in "qkv")
        a = ops.attention(q, k, v, p.get(f"{pre}q_norm.weight"), p.get(f"{pre}k_norm.weight"), num_heads=c.heads,
                          num_kv_heads=c.kv_heads, head_dim=c.head_dim, causal=True, rope_theta=c.rope_theta, eps=c.eps)
        return ops.linear(a, p[f"{pre}o.weight"])

    def moe(self, x_TH, layer: int, ep: ExpertParallel, comm, use_bias: bool):
        c, p, pre = self.cfg, self.dense, f"layers.{layer}.moe."
        bias = self.score_bias[layer] if (use_bias or c.score_bias) else None
        w_TK, idx_TK, logits_TE = ops.router(x_TH, p[f"{pre}router.weight"], p.get(f"{pre}router.bias"), bias,
                                             top_k=c.top_k, scoring=c.scoring, num_groups=c.num_groups,
                                             top_groups=c.top_groups, group_score=c.group_score,
                                             normalize=c.normalize, scaling=c.scaling)
        out_TH = ep(x_TH, w_TK, idx_TK, self.stacked(layer))
        if c.shared_ffn:
            out_TH = out_TH + self.shared(x_TH, pre)
        counts_E = torch.bincount(idx_TK.reshape(-1), minlength=c.experts).double()
        global_E = comm.all_reduce_sum(counts_E.clone())
        logits32 = logits_TE.float()
        probs_E = torch.softmax(logits32, -1).mean(0)
        # Switch/GShard: E * sum_e f_e * P_e, f from the job's global counts so ranks agree with one process
        aux = c.experts * (global_E.float() / global_E.sum().clamp_min(1) * probs_E).sum()
        z = torch.logsumexp(logits32, -1).pow(2).mean()
        return out_TH, aux, z, counts_E

    def shared(self, x_TH, pre: str):
        p = self.dense
        y = ops.linear(ops.swiglu(ops.linear(x_TH, p[f"{pre}shared.gate_up"])), p[f"{pre}shared.down"])
        if f"{pre}shared.gate" in p:
            y = y * ops.sigmoid(ops.linear(x_TH, p[f"{pre}shared.gate"]))
        return y


def reference_params(cfg: MoEConfig, seed: int) -> dict[str, torch.Tensor]:
    """The full parameter set of build_model(cfg, with_loss=True), deterministic from the seed."""
    return init_params(build_model(cfg, with_loss=True), seed)
