"""The demo hook: a tiny random transformers MoE model, imported and run on one backend, checked
against transformers' own forward."""

from __future__ import annotations

import torch

from .. import knobs

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=128)


def tiny_model(family: str = "mixtral", seed: int = 0):
    knobs.prefer_offline_hub()
    import transformers as tf

    torch.manual_seed(seed)
    if family == "mixtral":
        cfg = tf.MixtralConfig(**TINY, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2)
        return tf.MixtralForCausalLM(cfg).eval()
    if family == "qwen3_moe":
        cfg = tf.Qwen3MoeConfig(**TINY, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                                norm_topk_prob=True, head_dim=16)
        return tf.Qwen3MoeForCausalLM(cfg).eval()
    raise ValueError(f"demo family must be 'mixtral' or 'qwen3_moe', got {family!r}")


def demo_summary(backend: str = "reference", family: str = "mixtral", device: str | None = None) -> str:
    """One line: max |diff| of the logits vs transformers, and whether every MoE block picked the same experts."""
    from ..runtime import compile
    from .importer import from_hf

    model = tiny_model(family)
    ids = torch.randint(0, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    imp = from_hf(model)
    with torch.no_grad():
        want = model(ids).logits
        got = compile(imp.graph, imp.params, device=device, backend=backend)(ids).cpu()
    same = same_experts(model, imp, ids)
    return (f"HF {family} (tiny, random) on {backend}: max |logits diff| {float((got - want).abs().max()):.2e} "
            f"(max |logit| {float(want.abs().max()):.2f}), same experts picked: {'yes' if same else 'no'}")


def same_experts(model, imp, ids) -> bool:
    """Compares each layer's router picks (as sets per token) between transformers and our reference router."""
    from ..ir.meanings import run_graph

    picks: dict[int, torch.Tensor] = {}
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, i, o, n=n: picks.__setitem__(n, o[2]))
             for n, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    env: dict = {}
    with torch.no_grad():
        run_graph(imp.graph, {"ids": ids}, dict(imp.params), env)
    ours = [env[f"layers.{n}.moe.router.indices"] for n in sorted(picks)]
    return all(torch.equal(o.reshape(-1, o.shape[-1]).sort(-1).values, picks[n].sort(-1).values)
               for n, o in zip(sorted(picks), ours))
