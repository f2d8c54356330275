"""The one-call GPU check: what it runs (checked here without a GPU), and that it says so on a machine
without one."""

import sys

import pytest
import torch

from portable_moe import gpucheck


def test_the_check_runs_the_gpu_tier_conformance_benchmark_and_a_resumed_mixed_training(tmp_path):
    steps = dict(gpucheck.steps(tmp_path, quick=True))
    assert any("test_triton_gpu.py" in a for a in steps["gpu tests"]) and "-m" in steps["gpu tests"]
    assert steps["conformance on cuda:0"][-6:-3] == ["conformance", "--device", "cuda:0"]
    bench = " ".join(steps["GPU benchmark"])
    assert "bench mixtral-8x7b qwen3-30b-a3b deepseek-v3 --device cuda:0 --dtype bfloat16" in bench
    assert "--tokens 1 128 4096 " in bench and "--tokens 1 32 " in " ".join(dict(gpucheck.steps(tmp_path, False))[
        "GPU benchmark"])
    first = " ".join(steps["train cuda:0+cpu, 6 steps, checkpoints"])
    assert "--devices cuda:0,cpu --backends triton,reference --steps 6 --checkpoint-every 3" in first
    second = " ".join(steps["resume on cpu,cpu to 8 steps"])
    assert "--devices cpu,cpu --steps 8 --resume" in second and str(tmp_path / "checkpoint") in second
    assert all(cmd[0] == sys.executable for cmd in steps.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_without_a_cuda_gpu_it_says_so_and_exits_2(capsys):
    assert gpucheck.main([]) == 2 and "no CUDA GPU" in capsys.readouterr().err
