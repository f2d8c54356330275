"""The grouped GEMM's tile (a CpuTile on the CPU, a GpuTile on OpenCL), from the first of: the shipped
table (tuned/cpu.json, CPU only) and this machine's (tuned-<kind>.json in the cache dir), keyed by TVM
version, device and shape bucket; a first-use tuning race for a large GEMM, within Options.tune_seconds
and saved to this machine's table; else the register model (CPU) or a 16x16 tile (OpenCL).

Legend: E experts, N out-features (2F with the SwiGLU epilogue), K in-features."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from .. import opencl
from ..tuned import TunedTable, race
from .executable import load
from .kernels.gemm import CpuTile, GpuTile
from .lower import TVM_VERSION, host
from .plan import gmm_step

SHIPPED = Path(__file__).with_name("tuned") / "cpu.json"
TUNE_FROM = 1 << 20             # N * K: below it, tuning costs more than it saves
FORMAT, VERSION = "portable_moe.tvm.tuned", 2
TILE = {"cpu": CpuTile, "opencl": GpuTile}


def device_name(kind: str) -> str:
    return host().cpu if kind == "cpu" else opencl.context()[2].name.strip()


def shape_key(op: str, N: int, K: int, swiglu: bool, kind: str = "cpu") -> str:
    n, k = (1 << (d - 1).bit_length() for d in (N, K))
    return f"{TVM_VERSION}|{device_name(kind)}|{op}{'+swiglu' if swiglu else ''}|n{n}|k{k}"


def candidates(N: int, K: int, swiglu: bool, kind: str = "cpu") -> list[CpuTile | GpuTile]:
    """Best first. OpenCL: square tiles the work-groups hold. CPU: per vectors-per-row nv, the most rows
    that fit the registers; the best hides FMA latency (>= 12 accumulators) with the fewest loads per FMA,
    and its NC weight panels fit half of L2."""
    if kind == "opencl":
        return [GpuTile(e) for e in (16, 32, 8) if e * e <= opencl.context()[2].max_work_group_size]
    h, s = host(), 2 if swiglu else 1
    scored = []
    for nv in (1, 2, 4):
        mt = min(14, (h.registers - 1 - nv * s) // (nv * s))
        if mt >= 2:
            acc, nb = mt * nv * s, nv * h.lanes
            panels = max(1, h.l2_bytes // 2 // (K * nb * 4 * s))
            nc = min(8, 1 << (panels.bit_length() - 1))
            scored.append(((acc >= 12, -(mt + nv * s) / acc, acc), CpuTile(mt, nb, nc)))
    tiles = [t for _, t in sorted(scored, key=lambda x: x[0], reverse=True)]
    best = tiles[0]
    return [best, CpuTile(best.MT, best.NB, max(1, best.NC // 2)), CpuTile(best.MT, best.NB, min(8, best.NC * 2)),
            *tiles[1:3], CpuTile(max(2, best.MT - 4), best.NB, best.NC)]


def tables(options, kind: str) -> list[tuple[str, TunedTable]]:
    """Where tuned tiles are looked up, first to last: (where it came from, the table); the last is this machine's."""
    shipped = [("shipped table", SHIPPED)] if kind == "cpu" else []
    return [(source, TunedTable(path, FORMAT, VERSION, "tvm tuned tiles"))
            for source, path in [*shipped, ("tuned here", options.cache_root("tvm") / f"tuned-{kind}.json")]]


def tile_of(entry, kind: str) -> CpuTile | GpuTile | None:
    """None when the entry is not a tile of this kind (then it is tuned again, and rewritten)."""
    try:
        return TILE[kind](**entry["tile"])
    except (TypeError, KeyError):
        return None


def rows_timed(E: int, kind: str) -> int:
    return 256 * E if kind == "cpu" else 256        # OpenCL: ~1 s of PoCL work


def runner(E: int, N: int, K: int, swiglu: bool, tile: CpuTile | GpuTile, kind: str, cache_dir: Path):
    """The GEMM with one tile, built and called as the executable does, over random rows (OpenCL: spread
    over at most 4 experts); runs it once and returns a function that runs it again."""
    step = gmm_step("grouped_matmul", [], E, N, K, tile, "n/a", swiglu, False)
    call, rows, busy = load(step, kind, cache_dir), rows_timed(E, kind), E if kind == "cpu" else min(E, 4)
    offsets = torch.cat([torch.linspace(0, rows, busy + 1).round().long(), torch.full((E - busy,), rows)])
    x, w = torch.randn(rows, K), torch.randn(E, N, K)
    step.run(call, x, w, offsets)
    return lambda: step.run(call, x, w, offsets)


def tune(E: int, N: int, K: int, swiglu: bool, options, kind: str) -> tuple[CpuTile | GpuTile, float]:
    """The fastest candidate tile and its GFLOP/s, raced within options.tune_seconds (progress on stderr)."""
    label = f"tvm: tuning grouped_matmul{'+swiglu' if swiglu else ''} {E}x{N}x{K} for {device_name(kind)}"
    flops = 2 * rows_timed(E, kind) * N * K
    return race(label, list(dict.fromkeys(candidates(N, K, swiglu, kind))),
                lambda tile: runner(E, N, K, swiglu, tile, kind, options.cache_root("tvm")), options.tune_seconds,
                lambda seconds: flops / seconds / 1e9)


def tile_for(op: str, E: int, N: int, K: int, swiglu: bool, options,
             kind: str = "cpu") -> tuple[CpuTile | GpuTile, str]:
    """The tile for one GEMM on a 'cpu' or 'opencl' device, and where it came from."""
    if options.use_tuned:
        key = shape_key(op, N, K, swiglu, kind)
        found = tables(options, kind)
        here = found[-1][1]                 # this machine's table, where a tuning result goes
        for source, table in found:
            tile = tile_of(table.entries.get(key), kind)
            if tile is not None:
                return tile, source
        if options.tune_seconds > 0 and N * K >= TUNE_FROM:
            tile, gflops = tune(E, N, K, swiglu, options, kind)
            here.put(key, {"tile": asdict(tile), "gflops": round(gflops, 1), "when": time.strftime("%Y-%m-%d")})
            return tile, "tuned here"
    if kind == "opencl":
        return GpuTile(), "default"
    return candidates(N, K, swiglu)[0], "register model"


def describe(kind: str, options) -> str:
    """The devices line: whose tiles, and whether they are tuned for this device (and where)."""
    def knows(table):
        return any(key.split("|")[:2] == [TVM_VERSION, device_name(kind)] and tile_of(entry, kind)
                   for key, entry in table.entries.items())

    fallback = "the register model" if kind == "cpu" else "16x16 tiles"
    how = next((source for source, table in tables(options, kind) if knows(table)),
               f"not tuned for it yet: tuned on first use of a large GEMM (tune_seconds), else {fallback}")
    if kind == "opencl":
        return f"GPU-style tiles (work-groups, shared memory) for {device_name(kind)}: {how}"
    h = host()
    model = f"{h.lanes * 32}-bit vectors, {h.registers} registers, L2 {h.l2_bytes >> 10} KiB"
    return f"CPU tiles for {h.cpu} ({model}): {how}"
