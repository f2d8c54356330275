"""The GPU check, one call on a machine whose Python already has a CUDA torch (nothing is installed or
downloaded): `python -m portable_moe.gpucheck` from a checkout (or `nox -s gpu`). Runs the tests marked
`gpu`, the conformance suite on cuda:0, the GPU layer benchmark (`portable-moe bench` on three models' MoE
layers, bf16, a short token set: Triton beside torch._grouped_mm, the per-expert loops and transformers'
experts implementations) and a cuda:0+cpu training run that checkpoints, then resumes on cpu,cpu; ends
with one line per step and exits 0 only if all passed."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path.cwd()
GPU_MODELS = ("mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "portable_moe.cli.main", *args]


def gpu_test_files() -> list[str]:
    return sorted(str(p) for p in (ROOT / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text())


def steps(out: Path, quick: bool) -> list[tuple[str, list[str]]]:
    ckpt = out / "checkpoint"
    train = ["train", "--config", "debug", "--nproc", "2", "--checkpoint", str(ckpt), "--report", str(out / "report")]
    tokens = ["1", "128", "4096"] if quick else ["1", "32", "128", "512", "4096", "16384"]
    found = [
        ("gpu tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs",
                       *gpu_test_files()] if gpu_test_files() else []),
        ("conformance on cuda:0", cli("conformance", "--device", "cuda:0", "--no-progress", "--json",
                                      str(out / "conformance.json"))),
        ("GPU benchmark", cli("bench", *GPU_MODELS, "--device", "cuda:0", "--dtype", "bfloat16", "--backend",
                              "triton", "--tokens", *tokens, "--json", str(out / "bench.json"), "--markdown",
                              str(out / "bench.md"))),
        ("train cuda:0+cpu, 6 steps, checkpoints", cli(*train, "--devices", "cuda:0,cpu", "--backends",
                                                       "triton,reference", "--steps", "6", "--checkpoint-every", "3")),
        ("resume on cpu,cpu to 8 steps", cli(*train, "--devices", "cpu,cpu", "--steps", "8", "--resume")),
    ]
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="folder for reports (default: a temporary one)")
    p.add_argument("--full", action="store_true", help="the benchmark's whole token set (slower)")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpucheck: no CUDA GPU here (torch.cuda.is_available() is False); nothing to check", file=sys.stderr)
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="portable-moe-gpucheck-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpucheck on {torch.cuda.get_device_name(0)}, torch {torch.__version__}; reports in {out}", flush=True)
    results = []
    for name, command in steps(out, quick=not args.full):
        if not command:
            results.append((name, "skipped (not in this checkout)", 0.0))
            continue
        print(f"\n== {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run(command).returncode
        results.append((name, "passed" if rc == 0 else f"FAILED (exit {rc})", time.perf_counter() - start))
    print("\n== summary")
    for name, verdict, seconds in results:
        print(f"  {name:42} {verdict:28} {seconds:6.1f} s")
    print(f"  total {sum(s for *_, s in results):.0f} s; reports in {out}")
    return 0 if all(v in ("passed",) or v.startswith("skipped") for _, v, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
