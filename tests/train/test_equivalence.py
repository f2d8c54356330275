"""Ranks running different backends train together, and their loss and gradients equal one process
running the IR graph on the reference backend (fp32 conformance tolerance rtol 1e-4)."""

from __future__ import annotations

import pytest
from train_jobs import check_against_reference, ok, run_job

from portable_moe.train import TrainConfig

pytestmark = pytest.mark.slow       # multi-process training runs: `nox -s slow`


def test_two_backends_even_placement_match_reference(tmp_path):
    cfg = TrainConfig(devices=("cpu", "cpu"), backends=("reference", "triton"), steps=1, batch=4, seq=8,
                      placement="even", z_loss=0.0, dump=str(tmp_path / "dump"))
    result = ok(run_job(cfg, tmp_path))
    check_against_reference(cfg, result, tmp_path / "dump")
    backends = {r["rank"]: r["backend"] for r in result.ranks}
    assert backends[0] == "reference" and "triton" in backends[1], result.ranks


def test_three_mixed_backends_speed_proportional_placement_match_reference(tmp_path):
    cfg = TrainConfig(devices=("cpu", "cpu", "cpu"), backends=("reference", "tvm", "triton"),
                      speeds=(1.0, 0.5, 0.25), steps=1, batch=6, seq=8, placement="balanced", z_loss=0.0,
                      dump=str(tmp_path / "dump"))
    result = ok(run_job(cfg, tmp_path))
    check_against_reference(cfg, result, tmp_path / "dump")
    hosted = [r["experts_hosted"] for r in sorted(result.ranks, key=lambda r: r["rank"])]
    assert hosted[0] > hosted[2], f"the fastest rank should host more experts than the slowest: {hosted}"
    assert len({r["backend"] for r in result.ranks}) >= 2, result.ranks
