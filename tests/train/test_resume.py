"""Loss falls; a run resumed on a different rank count, a run whose rank was killed (torchrun restart),
and a run that re-plans and migrates experts mid-run all follow the uninterrupted loss curve."""

from __future__ import annotations

import json
import time

import pytest
from train_jobs import ok, run_job

from portable_moe.train import TrainConfig

BASE = TrainConfig(devices=("cpu", "cpu"), backends=("reference", "reference"), steps=8, batch=6, seq=8,
                   speeds=(1.0, 0.5), checkpoint_every=2)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    work = tmp_path_factory.mktemp("base")
    return ok(run_job(BASE.with_(checkpoint=str(work / "ckpt")), work))


def test_loss_falls_on_the_synthetic_task(uninterrupted):
    losses = uninterrupted.losses
    assert len(losses) == BASE.steps
    assert losses[-1] < losses[0] - 0.5, losses


def test_resume_on_three_ranks_continues_the_curve(uninterrupted, tmp_path):
    ckpt = tmp_path / "ckpt"
    first = ok(run_job(BASE.with_(steps=4, checkpoint=str(ckpt)), tmp_path / "a"))
    assert first.losses == pytest.approx(uninterrupted.losses[:4], rel=1e-6)
    assert (ckpt / "latest").read_text() == "step-00000004"
    index = json.loads((ckpt / "step-00000004" / "index.json").read_text())
    assert index["meta"]["step"] == 4 and index["weight_map"]
    three = BASE.with_(devices=("cpu",) * 3, backends=("reference",) * 3, speeds=(1.0, 1.0, 0.5),
                       checkpoint=str(ckpt), resume=True)
    second = ok(run_job(three, tmp_path / "b"))
    assert [s["step"] for s in second.steps] == [4, 5, 6, 7]
    assert second.losses == pytest.approx(uninterrupted.losses[4:], rel=1e-4)


def test_killed_rank_restarts_from_checkpoint_and_ends_at_the_same_loss(uninterrupted, tmp_path):
    cfg = BASE.with_(checkpoint=str(tmp_path / "ckpt"), fail_at="1:5")
    result = ok(run_job(cfg, tmp_path, max_restarts=1))
    assert "injected failure at step 5" in result.stderr
    assert result.losses == pytest.approx(uninterrupted.losses, rel=1e-6)


def test_hung_rank_fails_fast_with_a_clear_message(tmp_path):
    cfg = BASE.with_(steps=4, fail_at="1:1:hang", timeout_s=4.0, checkpoint="", checkpoint_every=0)
    start = time.monotonic()
    result = run_job(cfg, tmp_path)
    assert result.returncode != 0
    assert time.monotonic() - start < 45
    assert "died or hung" in result.stderr, result.stderr[-2000:]


def test_replan_and_migration_leave_the_loss_curve_unchanged(tmp_path):
    cfg = BASE.with_(speeds=(1.0, 0.25), placement="even", checkpoint_every=0, steps=6, aux_loss=0.01,
                     aux_free_rate=1e-3, capacity_factor=1.5)
    plain = ok(run_job(cfg, tmp_path / "plain"))
    moved = ok(run_job(cfg.with_(replan_every=2, max_move_bytes=1 << 30), tmp_path / "moved"))
    assert sum(s["moved_bytes"] for s in moved.steps) > 0, "the re-plan should move experts toward the fast rank"
    assert moved.losses == pytest.approx(plain.losses, rel=1e-4)
