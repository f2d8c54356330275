"""On-disk compile cache: one exported library (CPU) or kernel source (OpenCL) per step, named by a
key over the step's spec, the target, the TVM version and the kernel code itself. A sha256 is written
beside each entry; an entry whose bytes do not match it is rebuilt, never loaded."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ..base import sha256_file
from .env import TVM_VERSION

CODE_FILES = ("kernels/gemm.py", "kernels/moe.py", "kernels/dense.py", "plan.py", "kernels/attention.py",
              "kernels/loss.py")
STATS: Counter = Counter()       # hit / miss / corrupt, for tests and the demo line


def code_hash() -> str:
    here = Path(__file__).parent
    return hashlib.sha256(b"".join((here / f).read_bytes() for f in CODE_FILES)).hexdigest()[:16]


def entry_key(spec: dict, target: str) -> str:
    blob = json.dumps({"spec": spec, "target": target, "tvm": TVM_VERSION, "code": code_hash()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def fetch(directory: Path, key: str, suffix: str, build: Callable[[Path], None]) -> Path:
    """The path of a verified cache entry; build(path) writes it when it is missing or corrupt."""
    directory.mkdir(parents=True, exist_ok=True)
    path, digest = directory / f"{key}{suffix}", directory / f"{key}{suffix}.sha256"
    if path.exists() and digest.exists():
        if sha256_file(path) == digest.read_text().strip():
            STATS["hit"] += 1
            return path
        STATS["corrupt"] += 1
    else:
        STATS["miss"] += 1
    tmp = directory / f"{key}.{os.getpid()}.tmp{suffix}"
    build(tmp)
    os.replace(tmp, path)
    digest.write_text(sha256_file(path) + "\n")
    return path
