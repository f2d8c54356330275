"""Tiles for the grouped GEMM: CPU tiles (kernels.gemm.CpuTile) and, on an OpenCL device, the GPU
kernel's tile (GpuTile), taken from the first of:

1. the shipped table (tuned/cpu.json, CPU only) and this machine's own results (tuned-<kind>.json in
   the cache dir), keyed by TVM version, device (LLVM's CPU name or the OpenCL device's) and shape bucket;
2. a short tuning pass now, for a large GEMM on a device neither knows: a handful of candidate tiles,
   bounded by Options.tune_seconds, progress on stderr; the winner is saved as in 1;
3. the default: on the CPU the register model (LLVM's vector width and register count for this CPU give
   MT x NB accumulators that fill the registers, and L2's size gives NC weight panels that fit half of
   it); on OpenCL a 16 x 16 tile.

Legend: E experts, N out-features (2F with the SwiGLU epilogue), K in-features, R rows."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch

from .env import TVM_VERSION, cpu_target, host_cpu, tvm
from .kernels.gemm import CpuTile, GpuTile, gmm_cpu

SHIPPED = Path(__file__).with_name("tuned") / "cpu.json"
TUNE_FROM = 1 << 20             # N * K: smaller GEMMs run the model's tile (tuning would cost more than it saves)


@dataclass(frozen=True)
class Host:
    cpu: str
    lanes: int                  # float32 lanes of the vectors LLVM will use
    registers: int              # vector registers
    l2_bytes: int

    def describe(self) -> str:
        return f"{self.cpu} ({self.lanes * 32}-bit vectors, {self.registers} registers, L2 {self.l2_bytes >> 10} KiB)"


@cache
def host() -> Host:
    target = cpu_target()
    features = set(tvm.target.codegen.llvm_get_cpu_features(target))
    wide = "avx512f" in features and "prefer-256-bit" not in features
    lanes = 16 if wide else 8 if "avx2" in features or "avx" in features else 4
    registers = 32 if "avx512f" in features or "neon" in features else 16
    return Host(host_cpu(), lanes, registers, l2_size())


def l2_size() -> int:
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                text = (index / "size").read_text().strip().upper()
                return int(text.rstrip("KM")) << (20 if text.endswith("M") else 10)
        except (OSError, ValueError):
            continue
    return 1 << 20


@cache
def opencl_device() -> tuple[str, int]:
    """The OpenCL device the backend runs on: its name and largest work-group."""
    from .opencl_runtime import context

    device = context()[2]
    return device.name.strip(), device.max_work_group_size


def device_name(kind: str) -> str:
    return host().cpu if kind == "cpu" else opencl_device()[0]


def shape_key(op: str, N: int, K: int, swiglu: bool, kind: str = "cpu") -> str:
    def bucket(n):
        return 1 << (n - 1).bit_length()
    return f"{TVM_VERSION}|{device_name(kind)}|{op}{'+swiglu' if swiglu else ''}|n{bucket(N)}|k{bucket(K)}"


def candidates(N: int, K: int, swiglu: bool) -> list[CpuTile]:
    """The register model's tiles, best first. Per vectors-per-row nv, the most rows that fit the
    registers; the best has enough accumulators to hide FMA latency (>= 12) and the fewest loads per FMA."""
    h, s = host(), 2 if swiglu else 1
    scored = []
    for nv in (1, 2, 4):
        mt = min(14, (h.registers - 1 - nv * s) // (nv * s))
        if mt < 2:
            continue
        acc, loads = mt * nv * s, mt + nv * s
        nb = nv * h.lanes
        panels = max(1, h.l2_bytes // 2 // (K * nb * 4 * s))
        nc = min(8, 1 << (panels.bit_length() - 1))
        scored.append(((acc >= 12, -loads / acc, acc), CpuTile(mt, nb, nc)))
    tiles = [t for _, t in sorted(scored, key=lambda x: x[0], reverse=True)]
    best = tiles[0]
    return [best, CpuTile(best.MT, best.NB, max(1, best.NC // 2)), CpuTile(best.MT, best.NB, min(8, best.NC * 2)),
            *tiles[1:3], CpuTile(max(2, best.MT - 4), best.NB, best.NC)]


def gpu_candidates() -> list[GpuTile]:
    """Square tiles the device's work-groups can hold, the default (16) first."""
    return [GpuTile(e) for e in (16, 32, 8) if e * e <= opencl_device()[1]]


def local_table(options, kind: str = "cpu") -> Path:
    return options.cache_root("tvm") / f"tuned-{kind}.json"


def read_table(path: Path, tile_type: type = CpuTile) -> dict:
    try:
        data = json.loads(path.read_text())
        return {k: tile_type(**v["tile"]) for k, v in data["entries"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}          # missing or damaged: tuned again, and rewritten


def save(path: Path, key: str, tile: CpuTile | GpuTile, gflops: float):
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
        entries = data.get("entries", {}) if isinstance(data, dict) else {}
    except (OSError, ValueError):
        entries = {}
    entries[key] = {"tile": asdict(tile), "gflops": round(gflops, 1), "when": time.strftime("%Y-%m-%d")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": "portable_moe.tvm.tuned", "version": 2, "entries": entries}, indent=1))
    os.replace(tmp, path)


def runner(E: int, N: int, K: int, swiglu: bool, tile: CpuTile):
    """One tile compiled, on ~256 rows per expert of random data: a function that times one call."""
    func = tvm.compile(gmm_cpu(E, N, K, tile, swiglu), target=cpu_target())
    rows, F, nb = 256 * E, N // 2 if swiglu else N, tile.fit(N // 2 if swiglu else N).NB
    tensors = (torch.randn(rows, K), torch.randn(E, N // nb, K, nb), torch.linspace(0, rows, E + 1).round().long(),
               torch.zeros(N), torch.empty(rows, F))
    args = [tvm.runtime.from_dlpack(t) for t in tensors]
    func(*args)

    def seconds() -> float:
        t0 = time.perf_counter()
        func(*args)
        return time.perf_counter() - t0
    return seconds


def opencl_runner(E: int, N: int, K: int, swiglu: bool, tile: GpuTile):
    """The GPU kernel with one tile, built for the OpenCL device and called as the executable calls it, on
    256 rows of random data over at most 4 experts (a GEMM that keeps PoCL busy ~1 s): times one call."""
    from .executable import opencl_call_of
    from .plan import gmm_step

    step = gmm_step("grouped_matmul", [], E, N, K, tile, "n/a", swiglu, False)
    call = opencl_call_of(step, opencl_target())
    busy = min(E, 4)
    offsets = torch.cat([torch.linspace(0, 256, busy + 1).round().long(), torch.full((E - busy,), 256)])
    tensors = (torch.randn(256, K), torch.randn(E, N, K), offsets, torch.zeros(N),
               torch.empty(256, N // 2 if swiglu else N))
    call("gmm", *tensors)

    def seconds() -> float:
        t0 = time.perf_counter()
        call("gmm", *tensors)
        return time.perf_counter() - t0
    return seconds


def opencl_target():
    return tvm.target.Target({"kind": "opencl"}, host={"kind": "llvm"})


def tune(E: int, N: int, K: int, swiglu: bool, budget: float, kind: str = "cpu",
         rounds: int = 3) -> tuple[CpuTile | GpuTile, float]:
    """Compiles candidates while half the budget lasts, then times them in turns (best of `rounds`), so
    load from other processes falls on every candidate alike."""
    start, built = time.perf_counter(), []
    cpu = kind == "cpu"
    tiles = list(dict.fromkeys(candidates(N, K, swiglu) if cpu else gpu_candidates()))
    label = f"grouped_matmul{'+swiglu' if swiglu else ''} {E}x{N}x{K} for {device_name(kind)}"
    for i, tile in enumerate(tiles):
        built.append((tile, (runner if cpu else opencl_runner)(E, N, K, swiglu, tile)))
        spent = time.perf_counter() - start
        print(f"tvm: tuning {label}: compiled {i + 1}/{len(tiles)} tiles, {spent:.0f} s", file=sys.stderr, flush=True)
        if spent > budget / 2:
            break
    best = dict.fromkeys((tile for tile, _ in built), float("inf"))
    for _ in range(rounds):
        for tile, run in built:
            best[tile] = min(best[tile], run())
    rate = {t: 2 * 256 * (E if cpu else 1) * N * K / s / 1e9 for t, s in best.items()}
    tile = max(rate, key=rate.get)
    gflops = rate[tile]
    others = ", ".join(f"{t.describe()} {r:.1f}" for t, r in rate.items() if t != tile)
    print(f"tvm: tuned {label}: tile {tile.describe()}, {gflops:.1f} GFLOP/s{f' ({others})' if others else ''}, "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return tile, gflops


def tile_for(op: str, E: int, N: int, K: int, swiglu: bool, options,
             kind: str = "cpu") -> tuple[CpuTile | GpuTile, str]:
    """The tile for one GEMM on a 'cpu' or 'opencl' device and where it came from: 'shipped table',
    'tuned here', else 'register model' (CPU) or 'default' (OpenCL)."""
    cpu = kind == "cpu"
    if options.use_tuned:
        key, local = shape_key(op, N, K, swiglu, kind), local_table(options, kind)
        tables = (("shipped table", read_table(SHIPPED)),) if cpu else ()
        for source, table in (*tables, ("tuned here", read_table(local, CpuTile if cpu else GpuTile))):
            if key in table:
                return table[key], source
        if options.tune_seconds > 0 and N * K >= TUNE_FROM:
            tile, gflops = tune(E, N, K, swiglu, options.tune_seconds, kind)
            save(local, key, tile, gflops)
            return tile, "tuned here"
    return (candidates(N, K, swiglu)[0], "register model") if cpu else (GpuTile(), "default")
