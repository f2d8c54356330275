"""IR graphs for imported transformers models, with every parameter bound to one transformers tensor
(ir name -> hf name), so import copies nothing and patch_hf can share the very same Parameters.

Legend: T tokens, H hidden, E experts, F expert FFN width, S shared-expert width, V vocabulary."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..ir import DType, Graph, GraphBuilder, TensorType, verify
from ..models.builder import routed_experts
from ..models.config import MoEConfig
from .errors import HFImportError
from .families import Family


@dataclass
class Binder:
    """A GraphBuilder whose params take the dtype and shape of the transformers tensors they bind."""

    b: GraphBuilder
    tensors: dict[str, torch.Tensor]
    names: dict[str, str] = field(default_factory=dict)

    def has(self, hf: str) -> bool:
        return hf in self.tensors

    def param(self, ir: str, hf: str, *shape: int) -> str:
        if hf not in self.tensors:
            raise HFImportError(f"missing weight '{hf}' (needed for '{ir}')")
        t = self.tensors[hf]
        if tuple(t.shape) != shape:
            raise HFImportError(f"weight '{hf}' has shape {list(t.shape)}, the config implies {list(shape)}")
        self.names[ir] = hf
        return self.b.param(ir, TensorType(dtype_of(t, hf), shape))


def dtype_of(t: torch.Tensor, name: str) -> DType:
    try:
        return DType(str(t.dtype).removeprefix("torch."))
    except ValueError:
        raise HFImportError(f"weight '{name}' has dtype {t.dtype}, which the IR does not have") from None


def moe_block(p: Binder, x: str, cfg: MoEConfig, fam: Family, ir: str, hf: str, score_bias_input: str | None = None):
    """Router, dispatch, gate/up and down grouped GEMMs, SwiGLU, combine (+ shared expert). Returns (y, logits)."""
    E, H, F = cfg.experts, cfg.hidden, cfg.expert_ffn
    b = p.b
    router_w = p.param(f"{ir}router.weight", f"{hf}gate.weight", E, H)
    score_bias = score_bias_input
    if fam.score_bias and score_bias is None:
        score_bias = p.param(f"{ir}router.score_bias", f"{hf}{fam.score_bias}", E)
    weights, indices, logits = b.op(
        "router", x, router_w, None, score_bias, name=f"{ir}router", top_k=cfg.top_k, scoring=cfg.scoring,
        num_groups=cfg.num_groups, top_groups=cfg.top_groups, group_score=cfg.group_score,
        normalize=cfg.normalize, scaling=cfg.scaling)
    gate_up = p.param(f"{ir}experts.gate_up", f"{hf}experts.gate_up_proj", E, 2 * F, H)
    down = p.param(f"{ir}experts.down", f"{hf}experts.down_proj", E, H, F)
    out = routed_experts(b, x, indices, weights, gate_up, down, E, ir)
    if fam.shared:
        shared = mlp(p, x, cfg.hidden, cfg.shared_ffn, f"{ir}shared.", f"{hf}{fam.shared}.")
        if fam.shared_gate:
            w = p.param(f"{ir}shared_gate.weight", f"{hf}{fam.shared_gate}.weight", 1, H)
            gate = b.op1("sigmoid", b.op1("linear", x, w, name=f"{ir}shared_gate"), name=f"{ir}shared_sig")
            shared = b.op1("mul", shared, gate, name=f"{ir}shared_scale")
        out = b.op1("add", out, shared, name=f"{ir}add_shared")
    return out, logits


def mlp(p: Binder, x: str, H: int, F: int, ir: str, hf: str) -> str:
    """A dense SwiGLU MLP kept as separate gate/up projections, exactly as transformers stores them."""
    b = p.b
    gate = b.op1("linear", x, p.param(f"{ir}gate_proj.weight", f"{hf}gate_proj.weight", F, H), name=f"{ir}gate_proj")
    up = b.op1("linear", x, p.param(f"{ir}up_proj.weight", f"{hf}up_proj.weight", F, H), name=f"{ir}up_proj")
    h = b.op1("mul", b.op1("silu", gate, name=f"{ir}silu"), up, name=f"{ir}glu")
    return b.op1("linear", h, p.param(f"{ir}down_proj.weight", f"{hf}down_proj.weight", H, F), name=f"{ir}down_proj")


def block_graph(tensors: dict[str, torch.Tensor], cfg: MoEConfig, fam: Family, hf: str, with_logits: bool = False,
                score_bias_input: bool = False) -> tuple[Graph, dict[str, str]]:
    """x[tokens, H] -> y[tokens, H] (and the float32 router logits) for the block whose weights start with hf."""
    p = Binder(GraphBuilder(f"{cfg.name}-moe-block"), tensors)
    dt = dtype_of(tensors[f"{hf}experts.gate_up_proj"], f"{hf}experts.gate_up_proj") \
        if f"{hf}experts.gate_up_proj" in tensors else cfg.dt
    x = p.b.input("x", TensorType(dt, ("tokens", cfg.hidden)))
    bias = p.b.input("score_bias", TensorType(DType.float32, (cfg.experts,))) if score_bias_input else None
    y, logits = moe_block(p, x, cfg, fam, "", hf, bias)
    outs = (y, logits) if with_logits else (y,)
    return verify(p.b.finish(*outs)), p.names


def attention(p: Binder, x: str, cfg: MoEConfig, fam: Family, ir: str, hf: str) -> str:
    b, H, D = p.b, cfg.hidden, cfg.head_dim
    widths = {"q": cfg.heads * D, "k": cfg.kv_heads * D, "v": cfg.kv_heads * D}
    proj = {}
    for n, width in widths.items():
        w = p.param(f"{ir}{n}.weight", f"{hf}{n}_proj.weight", width, H)
        bias = p.param(f"{ir}{n}.bias", f"{hf}{n}_proj.bias", width) if p.has(f"{hf}{n}_proj.bias") else None
        proj[n] = b.op1("linear", x, w, bias, name=f"{ir}{n}")
    q_norm = k_norm = None
    if fam.qk_norm == "head":
        q_norm = p.param(f"{ir}q_norm.weight", f"{hf}q_norm.weight", D)
        k_norm = p.param(f"{ir}k_norm.weight", f"{hf}k_norm.weight", D)
    elif fam.qk_norm == "full":
        for n in ("q", "k"):
            w = p.param(f"{ir}{n}_norm.weight", f"{hf}{n}_norm.weight", widths[n])
            proj[n] = b.op1("rms_norm", proj[n], w, name=f"{ir}{n}_norm", eps=cfg.eps)
    a = b.op1("attention", proj["q"], proj["k"], proj["v"], q_norm, k_norm, name=f"{ir}attention",
              num_heads=cfg.heads, num_kv_heads=cfg.kv_heads, head_dim=D, causal=True, rope_theta=cfg.rope_theta,
              eps=cfg.eps)
    o_bias = p.param(f"{ir}o.bias", f"{hf}o_proj.bias", H) if p.has(f"{hf}o_proj.bias") else None
    return b.op1("linear", a, p.param(f"{ir}o.weight", f"{hf}o_proj.weight", H, cfg.heads * D), o_bias,
                 name=f"{ir}o")


def norm(p: Binder, x: str, cfg: MoEConfig, ir: str, hf: str) -> str:
    return p.b.op1("rms_norm", x, p.param(f"{ir}.weight", f"{hf}.weight", cfg.hidden), name=ir, eps=cfg.eps)


def model_graph(tensors: dict[str, torch.Tensor], cfg: MoEConfig, fam: Family, hf_cfg) -> tuple[Graph, dict[str, str]]:
    """ids[batch, seq] -> logits[batch, seq, V]: embedding, N decoder layers, final norm, LM head."""
    p = Binder(GraphBuilder(cfg.name), tensors)
    ids = p.b.input("ids", TensorType(DType.int64, ("batch", "seq")))
    emb = p.param("embed.weight", "model.embed_tokens.weight", cfg.vocab_size, cfg.hidden)
    h = p.b.op1("embedding", ids, emb, name="embed")
    for i in range(cfg.layers):
        ir, hf = f"layers.{i}.", f"model.layers.{i}."
        a = attention(p, norm(p, h, cfg, f"{ir}attn_norm", f"{hf}input_layernorm"), cfg, fam, f"{ir}attn.",
                      f"{hf}self_attn.")
        h = p.b.op1("add", h, a, name=f"{ir}res1")
        x = norm(p, h, cfg, f"{ir}ffn_norm", f"{hf}post_attention_layernorm")
        if fam.dense_layer(hf_cfg, i):
            y = mlp(p, x, cfg.hidden, hf_cfg.intermediate_size, f"{ir}mlp.", f"{hf}mlp.")
        else:
            y, _ = moe_block(p, x, cfg, fam, f"{ir}moe.", f"{hf}mlp.")
        h = p.b.op1("add", h, y, name=f"{ir}res2")
    h = norm(p, h, cfg, "final_norm", "model.norm")
    head = "model.embed_tokens.weight" if getattr(hf_cfg, "tie_word_embeddings", False) else "lm_head.weight"
    logits = p.b.op1("linear", h, p.param("lm_head.weight", head, cfg.vocab_size, cfg.hidden), name="lm_head")
    return verify(p.b.finish(logits)), p.names
