"""Tile configs of the grouped GEMM by arch, variant (a fused SwiGLU holds two weight tiles), dtype, N, K and rows
per expert: autotuned (cache_dir/tuned.json), else tuned/defaults.json shrunk to fit the device, with a note."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

from ..cache import read_json
from ..tuned import TunedTable


@dataclass(frozen=True)
class GemmConfig:
    block_m: int = 64
    block_n: int = 64
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 3


FORMAT, VERSION = "portable_moe.triton.tuned", 1
DEFAULTS = read_json(Path(__file__).parent / "tuned" / "defaults.json", "triton default tile tables")
CPU_CONFIG = GemmConfig(16, 16, 16, 1, 1)   # the interpreter: small tiles keep numpy work low
CANDIDATES = tuple(GemmConfig(*c) for c in (
    (16, 64, 128, 4, 4), (16, 128, 128, 4, 4), (32, 64, 128, 4, 4), (64, 64, 64, 4, 4), (64, 128, 64, 4, 4),
    (64, 256, 64, 8, 3), (128, 64, 64, 4, 4), (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3)))


@dataclass(frozen=True)
class Limits:
    shared_memory: int        # bytes per block
    registers: int = 255      # per thread
    warp_size: int = 32


# Shared memory per block (opt-in maximum) by arch family, when torch cannot say: H100/H200 232,448 B.
SHARED_MEMORY = {"sm_90": 232448, "sm_10": 232448, "sm_80": 166912, "sm_86": 101376, "sm_89": 101376,
                 "gfx9": 65536, "gfx11": 65536}


def limits_for(arch: str, torch_device: str | None = None) -> Limits:
    shared = next((v for k, v in SHARED_MEMORY.items() if arch.startswith(k)), 49152)
    if torch_device and torch_device.startswith("cuda") and torch.cuda.is_available():
        shared = getattr(torch.cuda.get_device_properties(torch_device), "shared_memory_per_block_optin", 0) or shared
    return Limits(shared, 512, 64) if arch.startswith("gfx9") else Limits(shared)


def fits(cfg: GemmConfig, variant: str, elem: int, limits: Limits) -> bool:
    """Each pipeline stage's M x K input tile and N x K weight tiles (two with swiglu) in shared memory, and the
    fp32 accumulators (as many) within 3/4 of each thread's registers."""
    tiles = 1 + variant.startswith("swiglu")
    shared = cfg.num_stages * (cfg.block_m + tiles * cfg.block_n) * cfg.block_k * elem
    per_thread = tiles * cfg.block_m * cfg.block_n / (limits.warp_size * cfg.num_warps)
    return shared <= limits.shared_memory and per_thread <= limits.registers * 3 // 4


def bucket(rows_per_expert: int) -> str:
    return next((str(b) for b in (16, 32, 64, 128, 256) if rows_per_expert <= b), "large")


class TuningCache:
    """Autotuned configs, kept in a tuned table in the backend's cache dir (if any)."""

    def __init__(self, cache_dir: Path | None):
        self.path = Path(cache_dir) / "tuned.json" if cache_dir else None
        self.table = TunedTable(self.path, FORMAT, VERSION, "triton tuned configs")

    @staticmethod
    def key(arch, variant, dtype, n, k, rows_per_expert) -> str:
        return f"{arch}|{variant}|{dtype}|n{n}|k{k}|m{bucket(rows_per_expert)}|triton{triton.__version__}"

    def get(self, arch, variant, dtype, n, k, rows_per_expert, limits: Limits | None = None,
            elem: int = 2) -> tuple[GemmConfig, str | None]:
        """The config and, when it is not a tuned result, a note naming the default used."""
        if arch == "cpu":
            return CPU_CONFIG, None
        key = self.key(arch, variant, dtype, n, k, rows_per_expert)
        try:
            return GemmConfig(**self.table.entries.get(key)), None
        except TypeError:             # no entry, or a malformed one: the default below
            pass
        family = next((DEFAULTS[f] for f in (arch, arch[:5], arch[:4]) if f in DEFAULTS), DEFAULTS["generic"])
        table = family.get(dtype, family["any"])
        cfg, limits = GemmConfig(**table.get(bucket(rows_per_expert), table["large"])), limits or limits_for(arch)
        while not fits(cfg, variant, elem, limits) and (cfg.num_stages > 2 or cfg.block_n > 16):
            fewer = {"num_stages": cfg.num_stages - 1} if cfg.num_stages > 2 else {"block_n": cfg.block_n // 2}
            cfg = replace(cfg, **fewer)
        return cfg, f"untuned default tile config {asdict(cfg)} for {key}: run autotune() on this device to tune it"

    def put(self, arch, variant, dtype, n, k, rows_per_expert, cfg: GemmConfig):
        self.table.put(self.key(arch, variant, dtype, n, k, rows_per_expert), asdict(cfg))


def autotune(cache: TuningCache, arch: str, variant: str, dtype: str, n: int, k: int, rows_per_expert: int, run,
             limits: Limits, elem: int = 2, timer=None) -> GemmConfig | None:
    """Times run(cfg), the launch itself, for each candidate that fits and stores the fastest; None if none ran."""
    timer, timings = timer or functools.partial(do_bench, warmup=5, rep=20), {}
    for cfg in (c for c in CANDIDATES if fits(c, variant, elem, limits)):
        try:
            timings[cfg] = timer(lambda c=cfg: run(c))
        except Exception as err:  # noqa: BLE001 - a config that fails to compile or launch is not a candidate
            print(f"autotune: {cfg} failed: {type(err).__name__}")
    best = min(timings, key=timings.get, default=None)
    if best:
        cache.put(arch, variant, dtype, n, k, rows_per_expert, best)
    return best
