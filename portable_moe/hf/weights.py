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

MAX_CONFIG_BYTES = 16 << 20
PER_EXPERT = re.compile(r"^(?P<block>.*\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>\w+)\.weight$")


def read_config(path: Path):
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise HFImportError(f"{path}: no config.json (expected a local transformers model directory)")
    if (path / "config.json").stat().st_size > MAX_CONFIG_BYTES:
        raise HFImportError(f"{path}/config.json is larger than {MAX_CONFIG_BYTES} bytes; not a model config")
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except RecursionError:
        raise HFImportError(f"{path}/config.json: nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - transformers and huggingface_hub raise many untyped errors here
        reason = " ".join(str(e).split())[:300]
        raise HFImportError(f"{path}/config.json: transformers cannot read it ({reason})") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = f" (found {pickles}: pickle checkpoints are not read; convert them to safetensors)" if pickles else ""
        raise HFImportError(f"{path}: no *.safetensors weights{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise HFImportError(f"{f}: not a regular file")
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
        shapes = [tuple(have[n].shape) for n in names]
        first = [tuple(experts[0][n].shape) for n in names]
        if shapes != first or len(shapes[0]) != 2 or shapes[0] != shapes[1] or shapes[2] != shapes[0][::-1]:
            raise HFImportError(f"{block}.{e}: weight shapes {dict(zip(names, shapes))} do not match expert 0's "
                                f"{dict(zip(names, first))} or are not [F, H], [F, H], [H, F]")
        gate_up.append(torch.cat([have[gate], have[up]], dim=0))
        downs.append(have[down])
    return torch.stack(gate_up), torch.stack(downs)
