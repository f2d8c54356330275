"""Helpers of the ONNX tests: graphs and params of the presets that fit here."""

from __future__ import annotations

from portable_moe.ir.arrays import to_numpy
from portable_moe.models import build_model, build_moe_layer, init_params, preset

PRESETS_HERE = ("debug", "debug-deepseek")


def graph_and_params(name: str, layer: bool, with_loss: bool = False, dtype: str = "float32"):
    cfg = preset(name).with_(dtype=dtype)
    graph = build_moe_layer(cfg) if layer else build_model(cfg, with_loss=with_loss)
    return graph, init_params(graph, seed=1)


def arrays(params: dict) -> dict:
    return {k: to_numpy(v) for k, v in params.items()}


