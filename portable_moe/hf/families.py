"""One small record per supported transformers family: how to read its config into our MoEConfig,
and where its MoE block keeps each weight. Names are relative to a decoder layer ("mlp.gate.weight").

Legend: E experts, H hidden, F expert FFN width. Our IR wants gate_up [E, 2F, H] (gate rows first,
then up) and down [E, H, F]; transformers 5.x stores exactly that in experts.gate_up_proj / down_proj
for every family below (GPT-OSS stores [E, H, 2F] interleaved, and is refused for its activation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..models.config import MAX_SIZE, ConfigError, MoEConfig
from .errors import HFImportError


@dataclass(frozen=True)
class Family:
    name: str
    block_classes: tuple[str, ...]          # the MoE block module classes patch_hf replaces
    routing: Callable[[object], dict]        # HF config -> MoEConfig routing fields
    experts_attr: str                        # HF config attribute holding the expert count
    ffn_attr: str                            # ... the expert FFN width
    qk_norm: str = "none"                    # none | head (per head, Qwen3) | full (whole projection, OLMoE)
    shared: str | None = None                # prefix of the shared expert MLP inside the block
    shared_ffn: Callable[[object], int] | None = None
    shared_gate: str | None = None           # Qwen2-MoE: sigmoid gate Linear(H, 1) on the shared expert
    score_bias: str | None = None            # DeepSeek-V3 selection-only bias (a buffer in transformers)
    legacy_block: tuple[str, ...] = ()       # older checkpoint names of the block ("block_sparse_moe")
    legacy_experts: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    whole_model_refusal: str | None = None   # why the whole causal LM cannot be imported
    dense_layer: Callable[[object, int], bool] = field(default=lambda cfg, i: False)


def softmax_routing(cfg, always_normalize: bool = False) -> dict:
    return {"scoring": "softmax", "normalize": bool(always_normalize or getattr(cfg, "norm_topk_prob", False))}


def deepseek_routing(cfg) -> dict:
    method = getattr(cfg, "topk_method", "noaux_tc")
    if method not in (None, "noaux_tc"):
        raise HFImportError(f"DeepSeek-V3 topk_method={method!r} is not supported (only 'noaux_tc')")
    scoring = getattr(cfg, "scoring_func", "sigmoid")
    if scoring not in (None, "sigmoid"):
        raise HFImportError(f"DeepSeek-V3 scoring_func={scoring!r} is not supported (only 'sigmoid')")
    return {"scoring": "sigmoid", "normalize": bool(cfg.norm_topk_prob), "num_groups": int(cfg.n_group),
            "top_groups": int(cfg.topk_group), "group_score": "top2_sum", "scaling": float(cfg.routed_scaling_factor),
            "score_bias": True}


def qwen_dense_layer(cfg, i: int) -> bool:
    mlp_only = getattr(cfg, "mlp_only_layers", None) or []
    step = getattr(cfg, "decoder_sparse_step", 1) or 1
    return i in mlp_only or cfg.num_experts <= 0 or (i + 1) % step != 0


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("mixtral", ("MixtralSparseMoeBlock",), lambda c: softmax_routing(c, always_normalize=True),
           "num_local_experts", "intermediate_size", legacy_block=("block_sparse_moe",),
           legacy_experts=("w1", "w3", "w2")),
    Family("qwen2_moe", ("Qwen2MoeSparseMoeBlock",), softmax_routing, "num_experts", "moe_intermediate_size",
           shared="shared_expert", shared_ffn=lambda c: c.shared_expert_intermediate_size,
           shared_gate="shared_expert_gate", dense_layer=qwen_dense_layer),
    Family("qwen3_moe", ("Qwen3MoeSparseMoeBlock",), softmax_routing, "num_experts", "moe_intermediate_size",
           qk_norm="head", dense_layer=qwen_dense_layer),
    Family("olmoe", ("OlmoeSparseMoeBlock",), softmax_routing, "num_experts", "intermediate_size", qk_norm="full"),
    Family("deepseek_v3", ("DeepseekV3MoE",), deepseek_routing, "n_routed_experts", "moe_intermediate_size",
           shared="shared_experts", shared_ffn=lambda c: c.moe_intermediate_size * c.n_shared_experts,
           score_bias="gate.e_score_correction_bias",
           whole_model_refusal="DeepSeek-V3 uses Multi-head Latent Attention (MLA: low-rank q/kv projections, "
                               "split rope/nope heads), which the IR's attention op does not express; import its "
                               "MoE blocks only (from_hf(..., block_only=True) or patch_hf)",
           dense_layer=lambda c, i: i < c.first_k_dense_replace),
]}

REFUSED = {
    "gpt_oss": "GPT-OSS experts use a clamped SwiGLU (gate*sigmoid(alpha*gate) with alpha=swiglu_alpha, gate/up "
               "clamped to swiglu_limit, (up + 1)), interleaved gate/up columns and per-expert biases, which our "
               "swiglu op (silu(gate) * up, no biases) does not express; it also uses attention sinks",
    "deepseek_v2": "DeepSeek-V2 (MLA attention, greedy/group_limited_greedy softmax routing) is not supported",
}


def family_of(cfg) -> Family:
    kind = getattr(cfg, "model_type", None)
    if kind in REFUSED:
        raise HFImportError(f"model_type '{kind}' is refused: {REFUSED[kind]}")
    if kind not in FAMILIES:
        raise HFImportError(f"unknown transformers model_type '{kind}'; supported: {', '.join(FAMILIES)}")
    return FAMILIES[kind]


def moe_config(fam: Family, cfg, dtype: str, block_only: bool) -> MoEConfig:
    """Our MoEConfig for an HF config, refusing options the IR does not express."""
    act = getattr(cfg, "hidden_act", "silu")
    if act != "silu":
        raise HFImportError(f"{fam.name}: hidden_act={act!r} is not supported (our swiglu op is silu(gate) * up)")
    check_numbers(fam, cfg)
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    routing = fam.routing(cfg)
    shared = fam.shared_ffn(cfg) if fam.shared else 0
    try:
        return MoEConfig(name=f"hf-{fam.name}", vocab_size=cfg.vocab_size, hidden=cfg.hidden_size,
                         layers=cfg.num_hidden_layers, heads=heads,
                         kv_heads=getattr(cfg, "num_key_value_heads", None) or heads, head_dim=head_dim,
                         qk_norm=fam.qk_norm == "head", rope_theta=rope_theta(fam, cfg, block_only),
                         eps=cfg.rms_norm_eps, experts=getattr(cfg, fam.experts_attr), top_k=cfg.num_experts_per_tok,
                         expert_ffn=getattr(cfg, fam.ffn_attr), shared_ffn=shared,
                         shared_gate=fam.shared_gate is not None, dtype=dtype, **routing)
    except ConfigError as e:
        raise HFImportError(f"{fam.name} config.json: {e}") from None


def check_numbers(fam: Family, cfg):
    """The sizes the import computes with are positive ints, the scales finite positive numbers, checked
    before any arithmetic or allocation uses them."""
    sizes = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_experts_per_tok",
             fam.experts_attr, fam.ffn_attr] + [n for n in ("num_key_value_heads", "head_dim", "n_group",
                                                            "topk_group", "n_shared_experts", "first_k_dense_replace",
                                                            "shared_expert_intermediate_size", "decoder_sparse_step",
                                                            "intermediate_size") if getattr(cfg, n, None) is not None]
    for name in sizes:
        value = getattr(cfg, name, None)
        low = 0 if name in ("first_k_dense_replace", "n_shared_experts") else 1
        if type(value) is not int or not low <= value <= MAX_SIZE:
            raise HFImportError(f"{fam.name} config.json: {name}={value!r} must be an int in {low}..{MAX_SIZE}")
    for name in ("rms_norm_eps", "routed_scaling_factor", "rope_theta"):
        value = getattr(cfg, name, None)
        if value is not None and (type(value) not in (int, float) or not math.isfinite(value) or value <= 0):
            raise HFImportError(f"{fam.name} config.json: {name}={value!r} must be a finite number > 0")


def rope_theta(fam: Family, cfg, block_only: bool) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    if "rope_type" in params and not block_only and params["rope_type"] != "default":
        raise HFImportError(f"{fam.name}: rope_type={params['rope_type']!r} is not supported (only 'default' RoPE)")
    if not block_only and params.get("partial_rotary_factor", 1.0) != 1.0:
        raise HFImportError(f"{fam.name}: partial_rotary_factor={params['partial_rotary_factor']} is not supported")
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None:
        raise HFImportError(f"{fam.name}: config has no rope_theta")
    if type(theta) not in (int, float) or not math.isfinite(theta) or theta <= 0:
        raise HFImportError(f"{fam.name}: rope_theta={theta!r} must be a finite number > 0")
    return float(theta)


def check_whole_model(fam: Family, cfg):
    """Refuses attention variants the IR's attention op does not express."""
    if fam.whole_model_refusal:
        raise HFImportError(f"whole causal LM of {fam.name} refused: {fam.whole_model_refusal}")
    window = getattr(cfg, "sliding_window", None)
    use_window = getattr(cfg, "use_sliding_window", None)
    if window and use_window is not False:
        raise HFImportError(f"{fam.name}: sliding_window={window} attention is not supported (the IR's attention "
                            f"is fully causal)")
    layer_types = getattr(cfg, "layer_types", None) or []
    other = sorted({t for t in layer_types if t != "full_attention"})
    if other and use_window is not False:
        raise HFImportError(f"{fam.name}: layer_types {other} are not supported (only full_attention)")
    if getattr(cfg, "clip_qkv", None) is not None:
        raise HFImportError(f"{fam.name}: clip_qkv={cfg.clip_qkv} is not supported by the IR's attention")
    if getattr(cfg, "attention_dropout", 0.0):
        raise HFImportError(f"{fam.name}: attention_dropout={cfg.attention_dropout} is not supported")
