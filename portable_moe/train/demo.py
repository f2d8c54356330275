"""The demo hook: a 2-rank, 10-step CPU training on different backends per rank, with one re-plan."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .config import TrainConfig, TrainError
from .launch import run
from .report import summarize


def demo(workdir: Path | None = None, steps: int = 10) -> list[str]:
    """-> summary lines (loss first -> last, tokens/s, imbalance, bytes moved, backend per rank)."""
    cfg = TrainConfig(devices=("cpu", "cpu"), backends=("reference", "tvm"), speeds=(1.0, 0.5), steps=steps,
                      batch=8, seq=16, placement="even", replan_every=steps // 2, max_move_bytes=1 << 30)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(cfg, Path(workdir or tmp), timeout_s=120)
    if result.returncode != 0:
        raise TrainError(f"demo training failed (exit {result.returncode}): "
                         + (" | ".join(result.error_lines()) or f"see {result.log}"))
    steps_ = result.all_steps()
    return summarize(steps_, result.ranks)
