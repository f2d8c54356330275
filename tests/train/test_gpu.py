"""A GPU rank beside a CPU rank: one training step on cuda:0 (compiled Triton kernels, the whole rank on
the GPU) + cpu equals the single-process reference; its checkpoint resumes on cpu,cpu and continues the
loss curve of a run that never moved. Runs only where CUDA is available."""

from __future__ import annotations

import pytest
import torch
from train_jobs import check_against_reference, ok, run_job

from portable_moe.train import TrainConfig

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (cuda:0); none here")]

CPUS = TrainConfig(devices=("cpu", "cpu"), backends=("reference", "reference"), steps=3, batch=4, seq=8,
                   placement="even", z_loss=0.0)


def test_a_step_on_cuda_and_cpu_matches_the_reference_and_resumes_on_cpus(tmp_path):
    mixed = CPUS.with_(devices=("cuda:0", "cpu"), backends=("triton", "reference"), steps=2,
                       checkpoint=str(tmp_path / "ckpt"), dump=str(tmp_path / "dump"))
    first = ok(run_job(mixed, tmp_path / "mixed"))
    check_against_reference(mixed, first, tmp_path / "dump")
    gpu_rank = next(r for r in first.ranks if r["rank"] == 0)
    assert gpu_rank["backend"] == "triton" and not gpu_rank["fallback_reason"], gpu_rank
    resumed = ok(run_job(CPUS.with_(checkpoint=str(tmp_path / "ckpt"), resume=True), tmp_path / "resumed"))
    assert [s["step"] for s in resumed.steps] == [3]
    plain = ok(run_job(CPUS, tmp_path / "plain"))
    assert resumed.losses == pytest.approx(plain.losses[2:], rel=1e-3)
