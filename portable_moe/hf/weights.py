"""Reads a local transformers checkpoint (config.json + safetensors; never downloads, never unpickles) and
brings its tensor names to the transformers 5.x layout: fused experts.gate_up_proj [E, 2F, H] (gate rows,
then up rows) and experts.down_proj [E, H, F], with the MoE block under `mlp.`."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import HFImportError
from .families import Family

PER_EXPERT = re.compile(r"^(?P<block>.*\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>\w+)\.weight$")


def read_config(path: Path):
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise HFImportError(f"{path}: no config.json (expected a local transformers model directory)")
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ValueError, KeyError, OSError) as e:
        raise HFImportError(f"{path}/config.json: transformers cannot read it ({e})") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = f" (found {pickles}: pickle checkpoints are not read; convert them to safetensors)" if pickles else ""
        raise HFImportError(f"{path}: no *.safetensors weights{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except (OSError, SafetensorError) as e:
            raise HFImportError(f"cannot read weights {f}: {e}") from None
    return tensors


def canonical(tensors: dict[str, torch.Tensor], fam: Family) -> dict[str, torch.Tensor]:
    """Renames legacy block prefixes and stacks per-expert w1/w3/w2 (or gate/up/down_proj) into fused tensors."""
    out: dict[str, torch.Tensor] = {}
    per_expert: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for name, t in tensors.items():
        for old in fam.legacy_block:
            name = name.replace(f".{old}.", ".mlp.")
        m = PER_EXPERT.match(name)
        if m:
            per_expert.setdefault(m["block"], {}).setdefault(int(m["e"]), {})[m["proj"]] = t
        else:
            out[name] = t
    for block, experts in per_expert.items():
        out[f"{block}.gate_up_proj"], out[f"{block}.down_proj"] = stack_experts(block, experts, fam.legacy_experts)
    return out


def stack_experts(block: str, experts: dict[int, dict[str, torch.Tensor]], names: tuple[str, str, str]):
    gate, up, down = names
    if sorted(experts) != list(range(len(experts))):
        raise HFImportError(f"{block}: expert indices {sorted(experts)[:8]}... are not 0..{len(experts) - 1}")
    gate_up, downs = [], []
    for e in range(len(experts)):
        have = experts[e]
        missing = [n for n in names if n not in have]
        if missing or len(have) != 3:
            raise HFImportError(f"{block}.{e}: expected weights {list(names)}, found {sorted(have)}")
        gate_up.append(torch.cat([have[gate], have[up]], dim=0))
        downs.append(have[down])
    return torch.stack(gate_up), torch.stack(downs)
