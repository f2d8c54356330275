"""Sharded, atomic, resumable checkpoints: one safetensors shard per rank (each tensor written once, by
its lowest holder) and a JSON index, assembled in '<dir>/step-N.tmp', fsynced, renamed to
'<dir>/step-N'; the 'latest' pointer is replaced last (write + fsync + rename). A crash at any point
leaves the previous checkpoint and pointer intact. Reading needs only names, so any rank count or mix
can resume (the placement is re-planned when the ranks differ)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import TrainError

INDEX = "index.json"
LATEST = "latest"
KEEP = 2


def fsync_path(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def prepare(root: Path, step: int) -> Path:
    """Rank 0, before the shards: a fresh temp dir (a stale one from a crash is discarded)."""
    tmp = step_dir(root, step).with_suffix(".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_shard(tmp: Path, rank: int, tensors: dict[str, torch.Tensor]):
    path = tmp / f"shard-{rank:05d}.safetensors"
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    fsync_path(path)


def commit(root: Path, step: int, meta: dict):
    """Rank 0, after every shard is written: index, rename, pointer, prune."""
    tmp = step_dir(root, step).with_suffix(".tmp")
    weight_map = {}
    for shard in sorted(tmp.glob("shard-*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            weight_map |= dict.fromkeys(f.keys(), shard.name)
    (tmp / INDEX).write_text(json.dumps({"meta": meta, "weight_map": weight_map}))
    fsync_path(tmp / INDEX)
    final = step_dir(root, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(root)
    write_atomic(root / LATEST, final.name)
    for old in sorted(root.glob("step-*"))[:-KEEP]:
        if old.is_dir() and old != final and not old.name.endswith(".tmp"):
            shutil.rmtree(old, ignore_errors=True)


def latest(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    if not (path / INDEX).exists():
        raise TrainError(f"checkpoint pointer {pointer} names {path.name}, which has no {INDEX}")
    return path


def read_index(path: Path) -> dict:
    try:
        return json.loads((path / INDEX).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TrainError(f"cannot read checkpoint index {path / INDEX}: {e}") from None


def load_tensors(path: Path, index: dict, names: list[str]) -> dict[str, torch.Tensor]:
    """Reads only the named tensors, each from the shard the index says holds it."""
    wm = index["weight_map"]
    missing = [n for n in names if n not in wm]
    if missing:
        raise TrainError(f"checkpoint {path} lacks {len(missing)} tensor(s), e.g. {missing[:3]}")
    by_file: dict[str, list[str]] = {}
    for n in names:
        by_file.setdefault(wm[n], []).append(n)
    out = {}
    for file, keys in by_file.items():
        with safe_open(str(path / file), "pt") as f:
            out |= {k: f.get_tensor(k) for k in keys}
    return out
