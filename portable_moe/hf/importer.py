"""from_hf: a transformers model object, or a local model directory, -> our IR graph + parameters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..ir import Graph
from ..models.config import MoEConfig
from .errors import HFImportError
from .families import Family, check_whole_model, family_of, moe_config
from .graph import block_graph, model_graph
from .weights import canonical, read_config, read_tensors


@dataclass
class HFImport:
    graph: Graph
    params: dict[str, torch.Tensor]      # ir name -> tensor (the transformers tensors themselves, not copies)
    config: MoEConfig
    family: str
    names: dict[str, str]                # ir name -> transformers name
    layer: int | None = None             # which decoder layer, for a block-only import

    def compile(self, backend: str | None = None, device: str | None = None):
        from ..runtime import compile

        return compile(self.graph, self.params, device=device, backend=backend)


def source(model_or_path) -> tuple[object, dict[str, torch.Tensor]]:
    """(HF config, tensors under transformers 5.x names) from a model object or a local directory."""
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.is_dir():
            raise HFImportError(f"{path}: not a local directory (from_hf never downloads; pass a local model "
                                f"directory holding config.json and *.safetensors)")
        cfg = read_config(path)
        return cfg, canonical(read_tensors(path), family_of(cfg))
    cfg = getattr(model_or_path, "config", None)
    if cfg is None or not isinstance(model_or_path, torch.nn.Module):
        raise HFImportError(f"expected a transformers model or a directory path, got {type(model_or_path).__name__}")
    state = {k: v.detach() for k, v in model_or_path.state_dict(keep_vars=True).items()}
    if not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}       # a base model (no LM head)
    return cfg, state


def moe_layers(fam: Family, cfg) -> list[int]:
    return [i for i in range(cfg.num_hidden_layers) if not fam.dense_layer(cfg, i)]


def from_hf(model_or_path, block_only: bool = False, layer: int | None = None) -> HFImport:
    """Imports a whole causal LM (ids -> logits) or, with block_only, one MoE block (x[tokens, H] -> y);
    layer picks the decoder layer (default: the first with an MoE block). Refuses what it does not understand."""
    cfg, tensors = source(model_or_path)
    fam = family_of(cfg)
    dtype = weight_dtype(tensors)
    mcfg = moe_config(fam, cfg, dtype, block_only)
    if block_only or layer is not None:
        sparse = moe_layers(fam, cfg)
        if not sparse:
            raise HFImportError(f"{fam.name}: no decoder layer has an MoE block")
        chosen = sparse[0] if layer is None else layer
        if chosen not in sparse:
            raise HFImportError(f"layer {chosen} has no MoE block; MoE layers: {sparse}")
        graph, names = block_graph(tensors, mcfg, fam, f"model.layers.{chosen}.mlp.")
        return HFImport(graph, {k: tensors[v] for k, v in names.items()}, mcfg, fam.name, names, chosen)
    check_whole_model(fam, cfg)
    graph, names = model_graph(tensors, mcfg, fam, cfg)
    return HFImport(graph, {k: tensors[v] for k, v in names.items()}, mcfg, fam.name, names)


def weight_dtype(tensors: dict[str, torch.Tensor]) -> str:
    kinds = {str(t.dtype).removeprefix("torch.") for k, t in tensors.items() if k.endswith("experts.gate_up_proj")}
    if len(kinds) != 1:
        found = sorted(kinds) or "none"
        raise HFImportError(f"expected one dtype over the experts' gate_up_proj weights, found {found}")
    dtype = kinds.pop()
    if dtype not in ("float32", "float64", "bfloat16", "float16"):
        raise HFImportError(f"expert weights are {dtype}; supported: float32, float64, bfloat16, float16")
    return dtype
