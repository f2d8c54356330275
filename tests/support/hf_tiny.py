"""Tiny random transformers MoE models (built from configs, never downloaded), one per family."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3"]


def make_model(family: str, seed: int = 0, **overrides):
    import transformers as tf

    torch.manual_seed(seed)
    if family == "mixtral":
        cfg = tf.MixtralConfig(**TINY, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2, **overrides)
        model = tf.MixtralForCausalLM(cfg)
    elif family == "qwen2_moe":
        cfg = tf.Qwen2MoeConfig(**TINY, moe_intermediate_size=16, intermediate_size=24, num_experts=8,
                                shared_expert_intermediate_size=20, num_experts_per_tok=2, decoder_sparse_step=2,
                                **overrides)
        model = tf.Qwen2MoeForCausalLM(cfg)
    elif family == "qwen3_moe":
        cfg = tf.Qwen3MoeConfig(**TINY, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                                norm_topk_prob=True, head_dim=8, **overrides)
        model = tf.Qwen3MoeForCausalLM(cfg)
    elif family == "olmoe":
        cfg = tf.OlmoeConfig(**TINY, intermediate_size=16, num_experts=8, num_experts_per_tok=2, **overrides)
        model = tf.OlmoeForCausalLM(cfg)
    elif family == "deepseek_v3":
        cfg = tf.DeepseekV3Config(**TINY, moe_intermediate_size=16, intermediate_size=24, n_routed_experts=16,
                                  num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=1,
                                  first_k_dense_replace=1, q_lora_rank=None, kv_lora_rank=8, qk_rope_head_dim=4,
                                  qk_nope_head_dim=4, v_head_dim=8, routed_scaling_factor=2.5, **overrides)
        model = tf.DeepseekV3ForCausalLM(cfg)
        with torch.no_grad():      # make the selection-only bias and group limiting actually matter
            for layer in model.model.layers[1:]:
                layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(16) * 0.05)
    else:
        raise ValueError(family)
    with torch.no_grad():          # router std large enough that top-k choices are well separated
        for n, p in model.named_parameters():
            if n.endswith("mlp.gate.weight"):
                p.normal_(0, 0.5)
    return model.eval()
