"""Builds IR graphs from configs: one MoE layer, or a whole MoE transformer
(embedding, N x [rms_norm, attention, rms_norm, MoE FFN], final norm, LM head)."""

from __future__ import annotations

from ..ir import DType, Graph, GraphBuilder, TensorType, verify
from .config import MoEConfig


def tensor(cfg: MoEConfig, *shape) -> TensorType:
    return TensorType(cfg.dt, tuple(shape))


def moe_ffn(b: GraphBuilder, x: str, cfg: MoEConfig, prefix: str) -> str:
    """Router, dispatch, gate/up grouped GEMM, SwiGLU, down grouped GEMM, combine (+ shared expert)."""
    E, H, F = cfg.experts, cfg.hidden, cfg.expert_ffn
    router_w = b.param(f"{prefix}router.weight", tensor(cfg, E, H))
    bias = b.param(f"{prefix}router.bias", tensor(cfg, E)) if cfg.router_bias else None
    score_bias = b.param(f"{prefix}router.score_bias", TensorType(DType.float32, (E,))) if cfg.score_bias else None
    weights, indices, _ = b.op("router", x, router_w, bias, score_bias, name=f"{prefix}router", top_k=cfg.top_k,
                               scoring=cfg.scoring, num_groups=cfg.num_groups, top_groups=cfg.top_groups,
                               group_score=cfg.group_score, normalize=cfg.normalize, scaling=cfg.scaling)
    gate_up = b.param(f"{prefix}experts.gate_up", tensor(cfg, E, 2 * F, H))
    down = b.param(f"{prefix}experts.down", tensor(cfg, E, H, F))
    out = routed_experts(b, x, indices, weights, gate_up, down, E, prefix)
    if cfg.shared_ffn:
        out = b.op1("add", out, shared_expert(b, x, cfg, prefix), name=f"{prefix}add_shared")
    return out


def routed_experts(b: GraphBuilder, x: str, indices: str, weights: str, gate_up: str, down: str, E: int,
                   prefix: str = "", mm: str = "") -> str:
    """Dispatch, gate/up grouped GEMM, SwiGLU, down grouped GEMM, combine: the routed experts of every MoE
    graph (built here, imported from Hugging Face, or run through transformers' experts interface)."""
    rows, offsets, order = b.op("dispatch", x, indices, name=f"{prefix}dispatch", num_experts=E)
    h = b.op1("grouped_matmul", rows, gate_up, offsets, name=f"{prefix}gate_up{mm}")
    h = b.op1("swiglu", h, name=f"{prefix}swiglu")
    y = b.op1("grouped_matmul", h, down, offsets, name=f"{prefix}down{mm}")
    return b.op1("combine", y, order, weights, name=f"{prefix}combine")


def shared_expert(b: GraphBuilder, x: str, cfg: MoEConfig, prefix: str) -> str:
    H, F = cfg.hidden, cfg.shared_ffn
    gate_up = b.param(f"{prefix}shared.gate_up", tensor(cfg, 2 * F, H))
    down = b.param(f"{prefix}shared.down", tensor(cfg, H, F))
    h = b.op1("swiglu", b.op1("linear", x, gate_up, name=f"{prefix}shared_gate_up"), name=f"{prefix}shared_swiglu")
    y = b.op1("linear", h, down, name=f"{prefix}shared_down")
    if cfg.shared_gate:
        gate_w = b.param(f"{prefix}shared.gate", tensor(cfg, 1, H))
        gate = b.op1("sigmoid", b.op1("linear", x, gate_w, name=f"{prefix}shared_gate"), name=f"{prefix}shared_sig")
        y = b.op1("mul", y, gate, name=f"{prefix}shared_scale")
    return y


def attention_block(b: GraphBuilder, x: str, cfg: MoEConfig, prefix: str) -> str:
    H, D = cfg.hidden, cfg.head_dim
    q = b.op1("linear", x, b.param(f"{prefix}q.weight", tensor(cfg, cfg.heads * D, H)), name=f"{prefix}q")
    k = b.op1("linear", x, b.param(f"{prefix}k.weight", tensor(cfg, cfg.kv_heads * D, H)), name=f"{prefix}k")
    v = b.op1("linear", x, b.param(f"{prefix}v.weight", tensor(cfg, cfg.kv_heads * D, H)), name=f"{prefix}v")
    q_norm = b.param(f"{prefix}q_norm.weight", tensor(cfg, D)) if cfg.qk_norm else None
    k_norm = b.param(f"{prefix}k_norm.weight", tensor(cfg, D)) if cfg.qk_norm else None
    a = b.op1("attention", q, k, v, q_norm, k_norm, name=f"{prefix}attention", num_heads=cfg.heads,
              num_kv_heads=cfg.kv_heads, head_dim=D, causal=True, rope_theta=cfg.rope_theta, eps=cfg.eps)
    return b.op1("linear", a, b.param(f"{prefix}o.weight", tensor(cfg, H, cfg.heads * D)), name=f"{prefix}o")


def norm(b: GraphBuilder, x: str, cfg: MoEConfig, name: str) -> str:
    return b.op1("rms_norm", x, b.param(f"{name}.weight", tensor(cfg, cfg.hidden)), name=name, eps=cfg.eps)


def build_moe_layer(cfg: MoEConfig) -> Graph:
    """x[tokens, H] -> y[tokens, H]: the MoE FFN alone."""
    b = GraphBuilder(f"{cfg.name}-moe-layer")
    x = b.input("x", tensor(cfg, "tokens", cfg.hidden))
    return verify(b.finish(moe_ffn(b, x, cfg, "")))


def build_model(cfg: MoEConfig, with_loss: bool = False) -> Graph:
    """ids[batch, seq] -> logits[batch, seq, V] (and the mean cross-entropy against targets)."""
    b = GraphBuilder(cfg.name)
    ids = b.input("ids", TensorType(DType.int64, ("batch", "seq")))
    h = b.op1("embedding", ids, b.param("embed.weight", tensor(cfg, cfg.vocab_size, cfg.hidden)), name="embed")
    for i in range(cfg.layers):
        p = f"layers.{i}."
        h = b.op1("add", h, attention_block(b, norm(b, h, cfg, f"{p}attn_norm"), cfg, f"{p}attn."), name=f"{p}res1")
        h = b.op1("add", h, moe_ffn(b, norm(b, h, cfg, f"{p}ffn_norm"), cfg, f"{p}moe."), name=f"{p}res2")
    h = norm(b, h, cfg, "final_norm")
    logits = b.op1("linear", h, b.param("lm_head.weight", tensor(cfg, cfg.vocab_size, cfg.hidden)), name="lm_head")
    if not with_loss:
        return verify(b.finish(logits))
    targets = b.input("targets", TensorType(DType.int64, ("batch", "seq")))
    return verify(b.finish(logits, b.op1("cross_entropy", logits, targets, name="loss")))


def expert_ffn_graph(hidden: int, ffn: int, dtype: DType, slots: int):
    """rows[n, H] -> grouped gate_up -> swiglu -> grouped down, the experts' weights as inputs: the expert
    compute alone (a rank's local experts in training; calibration of a device's expert throughput)."""
    b = GraphBuilder("local-experts")
    rows = b.input("rows", TensorType(dtype, ("rows", hidden)))
    gate_up = b.input("gate_up", TensorType(dtype, (slots, 2 * ffn, hidden)))
    down = b.input("down", TensorType(dtype, (slots, hidden, ffn)))
    offsets = b.input("offsets", TensorType(DType.int64, (slots + 1,)))
    h = b.op1("grouped_matmul", rows, gate_up, offsets, name="ffn_gate_up")
    h = b.op1("swiglu", h, name="ffn_swiglu")
    return b.finish(b.op1("grouped_matmul", h, down, offsets, name="ffn_down"))
