"""The conformance results cache: per backend x device x dtype, did the suite pass? Written by the
conformance runner, read by run-time selection. One small JSON file in the cache dir."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from .. import knobs
from ..backends.devices import Device
from ..ir import PortableMoeError

FORMAT = "portable_moe.conformance-results"


def device_key(device: Device) -> str:
    return f"{device.kind}|{device.name}|{device.arch}"


def results_path() -> Path:
    return knobs.cache_dir() / "conformance-results.json"


def read(path: Path | None = None) -> dict:
    path = path or results_path()
    if not path.exists():
        return {}
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PortableMoeError(f"conformance results cache {path} is unreadable ({e}); delete it to reset") from None
    if obj.get("format") != FORMAT:
        raise PortableMoeError(f"{path} is not a conformance results cache")
    return obj.get("results", {})


def lookup(backend: str, device: Device, dtype: str, path: Path | None = None) -> dict | None:
    return read(path).get(f"{backend}|{device_key(device)}|{dtype}")


def record(backend: str, device: Device, dtype: str, passed: bool, summary: dict, path: Path | None = None):
    path = path or results_path()
    results = read(path)
    results[f"{backend}|{device_key(device)}|{dtype}"] = {"passed": passed, "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                         **summary}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({"format": FORMAT, "version": 1, "results": results}, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
