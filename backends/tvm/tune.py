"""Measures a few CPU grouped-GEMM tiles per shape and writes the winners to tuned/cpu.json, keyed by
TVM version, host CPU (LLVM's name), op and shape. Run: python -m portable_moe.backends.tvm.tune

Legend: E experts, N out-features (2F for the fused gate_up + SwiGLU), K in-features, R rows."""

from __future__ import annotations

import argparse
import json
import time

import torch

from .env import TVM_VERSION, cpu_target, host_cpu, tvm
from .gemm_kernels import CpuTile, gmm_cpu
from .tuned import DB

CANDIDATES = [CpuTile(mt, nb, nc) for mt in (4, 6, 8) for nb in (16, 32) for nc in (1, 2, 4)]
SHAPES = [  # (E, N, K, swiglu): the presets' expert GEMMs and the benchmark's
    (8, 64, 64, True), (8, 64, 32, False), (16, 64, 64, True), (16, 64, 32, False),
    (16, 2816, 1024, True), (16, 1024, 1408, False), (8, 3584, 512, True), (8, 512, 1792, False),
]


def measure(E: int, N: int, K: int, swiglu: bool, tile: CpuTile, rows: int, repeat: int = 3) -> float:
    func = tvm.compile(gmm_cpu(E, N, K, tile, swiglu), target=cpu_target())
    nb = tile.fit(N // 2 if swiglu else N).NB
    x_RK, w_packed = torch.randn(rows, K), torch.randn(E, N // nb, K, nb)
    offsets = torch.linspace(0, rows, E + 1).round().long()
    y = torch.empty(rows, N // 2 if swiglu else N)
    args = [tvm.runtime.from_dlpack(t) for t in (x_RK, w_packed, offsets, torch.zeros(N), y)]
    func(*args)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        func(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def tune(shapes, rows: int) -> list[dict]:
    entries = []
    for E, N, K, swiglu in shapes:
        timed = sorted((measure(E, N, K, swiglu, t, rows), i) for i, t in enumerate(CANDIDATES))
        seconds, best = timed[0]
        tile = CANDIDATES[best].fit(N // 2 if swiglu else N)
        gflops = 2 * rows * N * K / seconds / 1e9
        print(f"E={E} N={N} K={K} swiglu={swiglu}: {tile} {gflops:.0f} GFLOP/s")
        entries.append({"tvm": TVM_VERSION, "mcpu": host_cpu(), "op": "grouped_matmul", "E": E, "N": N, "K": K,
                        "tile": tile.__dict__, "gflops": round(gflops, 1), "rows": rows})
    return entries


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    args = parser.parse_args(argv)
    new = tune(SHAPES, args.rows)
    old = json.loads(DB.read_text())["entries"] if DB.exists() else []
    fresh = {(e["tvm"], e["mcpu"], e["op"], e["E"], e["N"], e["K"]) for e in new}
    kept = [e for e in old if (e["tvm"], e["mcpu"], e["op"], e["E"], e["N"], e["K"]) not in fresh]
    DB.write_text(json.dumps({"format": "portable_moe.tvm.tuned", "version": 1, "entries": kept + new},
                             indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
