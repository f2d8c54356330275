"""The GPU benchmark script parses and, on a machine without a GPU, says so and exits non-zero."""

import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).parents[3] / "benchmarks" / "bench_triton_gpu.py"


def test_bench_script_exits_clearly_without_a_gpu(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--tokens", "1", "--models", "qwen3-30b-a3b", "--out",
                          str(tmp_path / "t.md")], capture_output=True, text=True, timeout=300)
    if torch.cuda.is_available():
        assert run.returncode == 0 and (tmp_path / "t.md").exists()
    else:
        assert run.returncode == 2 and "no CUDA or ROCm GPU" in run.stderr
        assert not (tmp_path / "t.md").exists()


def test_bench_script_help_lists_its_options():
    run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "--out" in run.stdout and "--quick" in run.stdout
