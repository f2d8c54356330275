"""Sharded, atomic, verified, resumable checkpoints: one safetensors shard per rank (each tensor written
once, by its lowest holder) and a JSON index holding the weight map and every shard's sha256 (kept apart
from the data), assembled in '<dir>/step-N.tmp', fsynced, renamed to '<dir>/step-N'; the 'latest'
pointer is replaced last (write + fsync + rename). A crash at any point leaves the previous checkpoints
intact. Resuming takes the newest checkpoint whose index reads and whose shards match their checksums,
and says which damaged ones it skipped. Reading needs only names, so any rank count or device mix can
resume (the placement is re-planned when the ranks differ)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import TrainError

INDEX = "index.json"
LATEST = "latest"
KEEP = 2
STEP_DIR = re.compile(r"step-(\d{8})")


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


def committed(root: Path) -> list[Path]:
    """The step directories that were renamed into place (not '.tmp'), oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if STEP_DIR.fullmatch(p.name) and p.is_dir())


def check_start(root: Path, resume: bool, overwrite: bool):
    """Before a run: resuming needs a checkpoint; a fresh run never replaces one unless told to."""
    steps = committed(root)
    if resume and not steps:
        raise TrainError(f"--resume: no checkpoint in {root} (expected step-N directories from an earlier run)")
    if steps and not resume and not overwrite:
        raise TrainError(f"{root} already holds checkpoint {steps[-1].name}; pass --resume to continue it "
                         "or --overwrite to start over (deletes it)")


def clear(root: Path):
    """--overwrite, rank 0, before the first step: the directory's checkpoints go."""
    for path in committed(root) + sorted(root.glob("step-*.tmp")):
        shutil.rmtree(path)
    (root / LATEST).unlink(missing_ok=True)


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


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def commit(root: Path, step: int, meta: dict):
    """Rank 0, after every shard is written: index (weight map + checksums), rename, pointer, prune."""
    tmp = step_dir(root, step).with_suffix(".tmp")
    weight_map, sha256 = {}, {}
    for shard in sorted(tmp.glob("shard-*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            weight_map |= dict.fromkeys(f.keys(), shard.name)
        sha256[shard.name] = digest(shard)
    (tmp / INDEX).write_text(json.dumps({"meta": meta, "weight_map": weight_map, "sha256": sha256}))
    fsync_path(tmp / INDEX)
    final = step_dir(root, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(root)
    write_atomic(root / LATEST, final.name)
    older = [p for p in committed(root) if p.name <= final.name]
    for old in older[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)


def read_index(path: Path) -> dict:
    """The index, checked for form: a damaged one is a TrainError naming it, never a KeyError later."""
    where = path / INDEX
    try:
        obj = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise TrainError(f"cannot read checkpoint index {where}: {type(e).__name__}: {str(e)[:200]}") from None
    if not (isinstance(obj, dict) and isinstance(obj.get("meta"), dict) and isinstance(obj["meta"].get("step"), int)
            and all(isinstance(obj.get(k), dict) for k in ("weight_map", "sha256"))):
        raise TrainError(f"checkpoint index {where} lacks meta.step, weight_map or sha256 (damaged, or written "
                         "by an older version)")
    unlisted = set(obj["weight_map"].values()) - set(obj["sha256"])
    if unlisted:
        raise TrainError(f"checkpoint index {where} has no checksum for {sorted(unlisted)[0]}")
    return obj


def verify(path: Path, index: dict):
    for file, expected in sorted(index["sha256"].items()):
        shard = path / Path(file).name
        if not shard.is_file():
            raise TrainError(f"checkpoint {path} lacks its shard {shard.name}")
        if digest(shard) != expected:
            raise TrainError(f"checkpoint shard {shard} does not match its checksum")


def newest_intact(root: Path) -> tuple[Path, dict, dict[Path, str]]:
    """-> (directory, index, {newer checkpoint skipped as damaged: why}). Every rank reaches the same
    answer from the same files."""
    damaged = {}
    for path in reversed(committed(root)):
        try:
            index = read_index(path)
            verify(path, index)
            return path, index, damaged
        except TrainError as e:
            damaged[path] = str(e)
    raise TrainError(f"no intact checkpoint in {root}" + "".join(f"; {p.name}: {why}" for p, why in damaged.items()))


def set_aside(damaged: list[Path]):
    """Rank 0, at the first save after skipping them: damaged checkpoints leave the step-N sequence (kept
    as damaged-step-N for inspection), so pruning keeps intact ones."""
    for path in damaged:
        if path.is_dir():
            kept = path.with_name("damaged-" + path.name)
            if kept.exists():  # the same step damaged before: the newer copy is kept
                shutil.rmtree(kept)
            os.replace(path, kept)


def load_tensors(path: Path, index: dict, names: list[str]) -> dict[str, torch.Tensor]:
    """Reads only the named tensors (on the CPU), each from the shard the index says holds it."""
    wm = index["weight_map"]
    missing = [n for n in names if n not in wm]
    if missing:
        raise TrainError(f"checkpoint {path} lacks {len(missing)} tensor(s), e.g. {missing[:3]}")
    by_file: dict[str, list[str]] = {}
    for n in names:
        by_file.setdefault(wm[n], []).append(n)
    out = {}
    for file, keys in by_file.items():
        try:
            with safe_open(str(path / Path(file).name), "pt") as f:
                out |= {k: f.get_tensor(k) for k in keys}
        except (SafetensorError, OSError, ValueError) as e:
            raise TrainError(f"cannot read checkpoint shard {path / file}: {type(e).__name__}: {str(e)[:200]}") \
                from None
    return out
