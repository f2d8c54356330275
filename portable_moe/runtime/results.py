"""The conformance results cache: per backend x device x dtype, did the suite pass? Written by the
conformance runner, read by run-time selection. One small JSON file in the cache dir.

Writers hold a lock on a file beside it, re-read and merge, then replace the file atomically, so
concurrent runs keep every record. A file that cannot be read or trusted is ignored with a warning
(and rebuilt by the next record); a cache that cannot be written costs the record, never the run."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

from .. import knobs
from ..backends.cache import load_json, warn, write_json
from ..backends.devices import Device

FORMAT = "portable_moe.conformance-results"
WARNED: set[str] = set()         # say once per process what is wrong with a file


def device_key(device: Device) -> str:
    return f"{device.kind}|{device.name}|{device.arch}"


def results_path() -> Path:
    return knobs.cache_dir() / "conformance-results.json"


def read(path: Path | None = None) -> dict:
    """{key: record}; {} with a warning when the file is unusable."""
    path = path or results_path()
    obj, problem = load_json(path)
    if obj is None and problem is None:
        return {}
    if problem is None and not (isinstance(obj, dict) and obj.get("format") == FORMAT
                                and isinstance(obj.get("results"), dict)):
        problem = "not a conformance results cache"
    if problem:
        if str(path) not in WARNED:
            WARNED.add(str(path))
            warn(f"conformance results cache {path} ignored: {problem}; the next conformance run rebuilds it")
        return {}
    return {k: v for k, v in obj["results"].items() if isinstance(v, dict) and isinstance(v.get("passed"), bool)}


def lookup(backend: str, device: Device, dtype: str, path: Path | None = None) -> dict | None:
    return read(path).get(f"{backend}|{device_key(device)}|{dtype}")


def record(backend: str, device: Device, dtype: str, passed: bool, summary: dict, path: Path | None = None) -> bool:
    """Merges one verdict into the file under a lock; False (after a warning) when it cannot be written."""
    path = path or results_path()
    entry = {"passed": passed, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            results = read(path)
            results[f"{backend}|{device_key(device)}|{dtype}"] = entry
            write_json(path, {"format": FORMAT, "version": 1, "results": results})
    except OSError as e:
        warn(f"conformance verdict for {backend} not recorded: cannot write {path} ({e.strerror or e})")
        return False
    return True
