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

import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch

from ..tuned import race, save_entry, table_entries
from .env import TVM_VERSION, cpu_target, host_cpu, tvm
from .kernels.gemm import CpuTile, GpuTile

SHIPPED = Path(__file__).with_name("tuned") / "cpu.json"
TUNE_FROM = 1 << 20             # N * K: smaller GEMMs run the model's tile (tuning would cost more than it saves)
FORMAT, VERSION = "portable_moe.tvm.tuned", 2


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
    from ..opencl import context

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
    """key -> tile; entries that are not a tile of this type are left out (tuned again, and rewritten)."""
    tiles = {}
    for key, entry in table_entries(path, "tvm tuned tiles").items():
        try:
            tiles[key] = tile_type(**entry["tile"])
        except (TypeError, KeyError):
            continue
    return tiles


def save(path: Path, key: str, tile: CpuTile | GpuTile, gflops: float):
    save_entry(path, FORMAT, VERSION, key, {"tile": asdict(tile), "gflops": round(gflops, 1),
                                            "when": time.strftime("%Y-%m-%d")})


def runner(E: int, N: int, K: int, swiglu: bool, tile: CpuTile | GpuTile, kind: str):
    """The GEMM with one tile, built and called as the executable does, on random data (CPU: 256 rows per
    expert; OpenCL: 256 rows over at most 4 experts, a GEMM that keeps PoCL busy ~1 s): runs it once."""
    from .executable import load
    from .plan import gmm_step

    step = gmm_step("grouped_matmul", [], E, N, K, tile, "n/a", swiglu, False)
    call = load(step, kind)
    rows, busy = rows_timed(E, kind), E if kind == "cpu" else min(E, 4)
    offsets = torch.cat([torch.linspace(0, rows, busy + 1).round().long(), torch.full((E - busy,), rows)])
    x, w = torch.randn(rows, K), torch.randn(E, N, K)
    step.run(call, x, w, offsets)
    return lambda: step.run(call, x, w, offsets)


def rows_timed(E: int, kind: str) -> int:
    return 256 * E if kind == "cpu" else 256


def tune(E: int, N: int, K: int, swiglu: bool, budget: float, kind: str = "cpu") -> tuple[CpuTile | GpuTile, float]:
    tiles = list(dict.fromkeys(candidates(N, K, swiglu) if kind == "cpu" else gpu_candidates()))
    label = f"tvm: tuning grouped_matmul{'+swiglu' if swiglu else ''} {E}x{N}x{K} for {device_name(kind)}"
    return race(label, tiles, lambda tile: runner(E, N, K, swiglu, tile, kind), budget,
                lambda seconds: 2 * rows_timed(E, kind) * N * K / seconds / 1e9)


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
