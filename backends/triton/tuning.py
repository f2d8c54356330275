"""Tile configurations for the grouped GEMM, keyed by (device arch, dtype, shape bucket, Triton version).

Lookup order: the on-disk cache of autotuned results (cache_dir/tuned.json), then the defaults shipped
in tuned/defaults.json (per arch family), then a generic default. Anything but a tuned hit is reported
as an "untuned default" note, never silently."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import triton

from ..cache import read_json, warn, write_json

DEFAULTS_FILE = Path(__file__).parent / "tuned" / "defaults.json"


@dataclass(frozen=True)
class GemmConfig:
    block_m: int = 64
    block_n: int = 64
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 3

    def to_dict(self) -> dict:
        return asdict(self)


CPU_CONFIG = GemmConfig(16, 16, 16, 1, 1)   # the interpreter: small tiles keep numpy work low


def bucket(rows: int) -> str:
    """Token-count bucket: powers of two from 16 to 16384."""
    b = 16
    while b < rows and b < 16384:
        b *= 2
    return str(b)


def key(arch: str, dtype: str, n: int, k: int, rows: int) -> str:
    return f"{arch}|{dtype}|n{n}|k{k}|m{bucket(rows)}|triton{triton.__version__}"


class TuningCache:
    """Autotuned configs persisted as JSON in the backend's cache dir."""

    def __init__(self, cache_dir: Path | None):
        self.path = Path(cache_dir) / "tuned.json" if cache_dir else None
        self.entries: dict[str, dict] = {}
        if self.path:
            self.entries = read_json(self.path, "triton tuned configs")

    def get(self, arch, dtype, n, k, rows) -> tuple[GemmConfig, str | None]:
        """The config and, when it is not a tuned result, a note saying which default is used."""
        if arch == "cpu":
            return CPU_CONFIG, None
        hit = self.entries.get(key(arch, dtype, n, k, rows))
        if isinstance(hit, dict):
            try:
                return GemmConfig(**hit), None
            except TypeError:
                pass                      # a malformed entry: the default below
        defaults = json.loads(DEFAULTS_FILE.read_text())
        family = defaults.get(arch) or defaults.get(arch[:5]) or defaults["generic"]
        cfg = GemmConfig(**family.get(dtype, family["any"]))
        return cfg, (f"untuned default tile config {cfg.to_dict()} for {arch}/{dtype}/n{n}/k{k}/m{bucket(rows)}: "
                     "run autotune() on this device to tune it")

    def put(self, arch, dtype, n, k, rows, cfg: GemmConfig):
        self.entries[key(arch, dtype, n, k, rows)] = cfg.to_dict()
        if self.path:
            try:
                write_json(self.path, self.entries)
            except OSError as e:          # the tuned config still serves this process
                warn(f"triton tuned configs not saved to {self.path} ({e.strerror or e})")


CANDIDATES = (GemmConfig(64, 64, 32, 4, 3), GemmConfig(128, 128, 64, 8, 3), GemmConfig(128, 256, 64, 8, 3),
              GemmConfig(64, 128, 64, 4, 4), GemmConfig(128, 64, 64, 4, 4), GemmConfig(32, 64, 64, 4, 2))


def autotune(cache: TuningCache, arch: str, run, dtype: str, n: int, k: int, rows: int) -> GemmConfig:
    """Times run(cfg) (a GPU launch) for each candidate with triton.testing.do_bench; stores the fastest."""
    from triton.testing import do_bench

    timings = {}
    for cfg in CANDIDATES:
        try:
            timings[cfg] = do_bench(lambda c=cfg: run(c), warmup=5, rep=20)
        except Exception as err:   # out of shared memory on this card: that config is not a candidate
            timings[cfg] = float("inf")
            print(f"autotune: {cfg} failed: {type(err).__name__}")
    best = min(timings, key=timings.get)
    cache.put(arch, dtype, n, k, rows, best)
    return best
