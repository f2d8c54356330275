"""Parameters: deterministic initialisation from a seed, and safetensors files."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..ir import Graph, PortableMoeError
from ..ir.meanings import TORCH_DTYPES


class ParamsError(PortableMoeError):
    """Parameters are missing, extra, or of the wrong shape or dtype for a graph."""


def init_params(graph: Graph, seed: int = 0, std: float = 0.02) -> dict[str, torch.Tensor]:
    """Norm weights 1, biases 0, everything else normal(0, std); each from its own seeded stream,
    so a parameter's values do not depend on which others exist."""
    out = {}
    for i, p in enumerate(graph.params):
        shape = tuple(p.type.shape)
        if p.name.endswith("norm.weight"):
            t = torch.ones(shape)
        elif p.name.endswith("bias"):
            t = torch.zeros(shape)
        else:
            g = torch.Generator().manual_seed(seed * 1_000_003 + i)
            t = torch.randn(shape, generator=g) * std
        out[p.name] = t.to(TORCH_DTYPES[p.type.dtype.value])
    return out


def check_params(graph: Graph, params: dict):
    names = set(graph.param_names())
    missing, extra = names - params.keys(), params.keys() - names
    if missing:
        raise ParamsError(f"missing parameter(s) for graph '{graph.name}': {sorted(missing)[:5]}")
    if extra:
        raise ParamsError(f"parameter(s) not in graph '{graph.name}': {sorted(extra)[:5]}")
    for p in graph.params:
        t = params[p.name]
        if tuple(t.shape) != tuple(p.type.shape):
            raise ParamsError(f"parameter '{p.name}' has shape {list(t.shape)}, graph says {p.type}")
        if t.dtype != TORCH_DTYPES[p.type.dtype.value]:
            raise ParamsError(f"parameter '{p.name}' is {t.dtype}, graph says {p.type}")


def save_params(params: dict, path: str | Path):
    save_file({k: v.detach().contiguous().cpu() for k, v in params.items()}, str(path))


def load_params(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise ParamsError(f"cannot read parameters from {path}: {e}") from None
