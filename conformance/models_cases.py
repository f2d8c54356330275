"""Whole-model cases: the MoE layer and the full transformer (with its loss) of the small presets,
with weights scaled so activations stay near 1 (the default 0.02 init makes every output tiny, and a
tiny output would pass any absolute tolerance)."""

from __future__ import annotations

import torch

from ..ir import DType
from ..models import build_model, build_moe_layer, init_params, preset
from .sample import OpCase, Sample, Scale, case_seed, exact, randn, rng

PRESETS = ("debug", "debug-deepseek")


def layer_samples(name: str):
    def generate(dtype: DType, sc: Scale, seed: int) -> list[Sample]:
        cfg = preset(name).with_(dtype=dtype.value)
        graph = build_moe_layer(cfg)
        out = []
        for i, tokens in enumerate(sc.layer_tokens or (*sc.tokens, sc.tiles[-1], 0, 1)):
            s = case_seed(seed, f"layer:{name}", i)
            params = init_params(graph, s, std=cfg.hidden ** -0.5)
            tensors = {k: exact(v.double(), dtype) for k, v in params.items()}
            tensors["x"] = exact(randn(rng(s), tokens, cfg.hidden), dtype)
            label = {0: "edge:zero-tokens", 1: "edge:one-token"}.get(tokens, f"tokens={tokens}")
            out.append(Sample(f"layer:{name}", label, dtype, s, graph, tensors, kind="layer", empty=tokens == 0))
        return out
    return generate


def model_samples(name: str):
    def generate(dtype: DType, sc: Scale, seed: int) -> list[Sample]:
        if not sc.models:
            return []
        cfg = preset(name).with_(dtype=dtype.value)
        graph = build_model(cfg, with_loss=True)
        s = case_seed(seed, f"model:{name}", 0)
        params = init_params(graph, s, std=cfg.hidden ** -0.5)
        tensors = {k: exact(v.double(), dtype) for k, v in params.items()}
        g = rng(s)
        tensors["ids"] = torch.randint(0, cfg.vocab_size, (sc.batch, sc.seq), generator=g)
        tensors["targets"] = torch.randint(0, cfg.vocab_size, (sc.batch, sc.seq), generator=g)
        return [Sample(f"model:{name}", f"batch={sc.batch},seq={sc.seq}", dtype, s, graph, tensors, kind="model")]
    return generate


MODEL_CASES = {c.op: c for c in [OpCase(f"layer:{n}", layer_samples(n)) for n in PRESETS]
               + [OpCase(f"model:{n}", model_samples(n)) for n in PRESETS]}
