"""The demo hooks: a 2-rank, 10-step CPU training on different backends per rank, with one re-plan; and a
4-rank run on two emulated vendor islands with a slowed bridge and island-local routing."""

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


def island_demo(workdir: Path | None = None, steps: int = 3) -> list[str]:
    """-> lines: the islands, bytes over the bridge (tokens vs gradients) and inside islands per step."""
    cfg = TrainConfig(devices=("cpu@nvidia", "cpu@nvidia", "cpu@amd", "cpu@amd"), backends=("reference",) * 4,
                      steps=steps, batch=8, seq=16, placement="islands", routing="island", bridge_gbps=3.0)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(cfg, Path(workdir or tmp), timeout_s=180)
    if result.returncode != 0:
        raise TrainError(f"island demo failed (exit {result.returncode}): "
                         + " | ".join(result.stderr.strip().splitlines()[-3:]))
    last = max(result.steps, key=lambda s: s["step"])
    return [f"4 ranks in 2 islands ({', '.join(cfg.devices)}), bridge slowed to {cfg.bridge_gbps:g} GB/s, "
            f"one copy of the experts per island",
            f"island routing: {last['token_bridge_bytes'] / 1e6:.2f} MB of tokens and "
            f"{(last['bridge_bytes'] - last['token_bridge_bytes']) / 1e6:.2f} MB of gradients over the bridge, "
            f"{last['island_bytes'] / 1e6:.2f} MB inside islands per step",
            f"gradients reduced island -> bridge -> island ({last['hierarchical_all_reduces']} hierarchical "
            f"all-reduces per step); loss {result.steps[0]['loss']:.3f} -> {last['loss']:.3f}"]
