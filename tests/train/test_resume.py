"""Loss falls; a run resumed on a different rank count, a run whose rank was killed (torchrun restart,
which resumes from the run's newest checkpoint), a run resumed past a damaged checkpoint and a run that
re-plans and migrates experts mid-run all follow the uninterrupted loss curve."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from train_jobs import ok, run_job

from portable_moe.train import TrainConfig, checkpoint

pytestmark = pytest.mark.slow       # multi-process training runs: `nox -s slow`

BASE = TrainConfig(devices=("cpu", "cpu"), backends=("reference", "reference"), steps=8, batch=6, seq=8,
                   speeds=(1.0, 0.5), checkpoint_every=3)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("base")


@pytest.fixture(scope="module")
def uninterrupted(base_dir):
    return ok(run_job(BASE.with_(checkpoint=str(base_dir / "ckpt")), base_dir))


def test_loss_falls_on_the_synthetic_task(uninterrupted):
    losses = uninterrupted.losses
    assert len(losses) == BASE.steps
    assert losses[-1] < losses[0] - 0.5, losses


def test_the_last_step_is_always_saved(uninterrupted, base_dir):
    ckpt = base_dir / "ckpt"
    assert [p.name for p in checkpoint.committed(ckpt)] == ["step-00000006", "step-00000008"]
    assert (ckpt / "latest").read_text() == "step-00000008"


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
    assert [s["step"] for s in second.steps] == [5, 6, 7, 8]
    assert [s["step"] for s in second.history] == [1, 2, 3, 4]
    assert second.losses == pytest.approx(uninterrupted.losses[4:], rel=1e-4)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_and_says_so(uninterrupted, base_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(base_dir / "ckpt", ckpt)
    shard = ckpt / "step-00000008" / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    for i in range(0, len(data) // 2, 997):
        data[-1 - i] ^= 0x10
    shard.write_bytes(bytes(data))
    result = ok(run_job(BASE.with_(checkpoint=str(ckpt), resume=True), tmp_path / "run"))
    assert any("step-00000008 is damaged" in n and "resuming from step-00000006" in n for n in result.notes), \
        result.notes
    assert [s["step"] for s in result.steps] == [7, 8]
    assert result.losses == pytest.approx(uninterrupted.losses[6:], rel=1e-4)
    assert (ckpt / "damaged-step-00000008").is_dir() and (ckpt / "latest").read_text() == "step-00000008"


def test_no_intact_checkpoint_fails_every_rank_at_setup_with_one_line(tmp_path):
    ckpt = tmp_path / "ckpt"
    tmp = checkpoint.prepare(ckpt, 4)
    checkpoint.write_shard(tmp, 0, {"param/w": torch.ones(3)})
    checkpoint.commit(ckpt, 4, {"step": 4})
    (ckpt / "step-00000004" / "index.json").write_bytes(b"\xff\xfe")
    result = run_job(BASE.with_(checkpoint=str(ckpt), resume=True), tmp_path / "run")
    assert result.returncode != 0
    assert {(e["rank"], e["at"], e["kind"]) for e in result.errors} == {(0, "setup", "input"), (1, "setup", "input")}
    assert {e["message"] for e in result.errors} == {
        f"no intact checkpoint in {ckpt}; step-00000004: cannot read checkpoint index "
        f"{ckpt / 'step-00000004' / 'index.json'}: UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in "
        "position 0: invalid start byte"}


def test_killed_rank_restarts_from_checkpoint_and_ends_at_the_same_loss(uninterrupted, tmp_path):
    cfg = BASE.with_(checkpoint=str(tmp_path / "ckpt"), fail_at="1:5")
    result = ok(run_job(cfg, tmp_path, max_restarts=1))
    assert "injected failure at step 5" in result.stderr
    # the restart resumed from step 3, the newest checkpoint: it re-ran 4..8, not the whole run
    assert [s["step"] for s in result.history] == [1, 2, 3]
    assert [s["step"] for s in result.steps] == [1, 2, 3, 4, 4, 5, 6, 7, 8]
    assert result.losses == pytest.approx(uninterrupted.losses, rel=1e-6)


def test_hung_rank_fails_fast_with_a_clear_message(tmp_path):
    cfg = BASE.with_(steps=4, fail_at="1:2:hang", timeout_s=4.0, checkpoint="", checkpoint_every=0)
    start = time.monotonic()
    result = run_job(cfg, tmp_path)
    assert result.returncode != 0
    assert time.monotonic() - start < 45
    peer = [e for e in result.errors if e["rank"] == 0]
    assert peer and peer[0]["kind"] == "peer" and peer[0]["at"] == "step 2", result.stderr[-2000:]
    assert "a peer rank died or hung" in result.error_lines()[0]


def test_replan_and_migration_leave_the_loss_curve_unchanged(tmp_path):
    cfg = BASE.with_(speeds=(1.0, 0.25), placement="even", checkpoint_every=0, steps=6, aux_loss=0.01,
                     aux_free_rate=1e-3, capacity_factor=1.5)
    plain = ok(run_job(cfg, tmp_path / "plain"))
    moved = ok(run_job(cfg.with_(replan_every=2, max_move_bytes=1 << 30), tmp_path / "moved"))
    assert sum(s["moved_bytes"] for s in moved.steps) > 0, "the re-plan should move experts toward the fast rank"
    assert moved.losses == pytest.approx(plain.losses, rel=1e-4)
