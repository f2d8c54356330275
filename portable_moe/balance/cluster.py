"""Cluster model: devices with throughput and memory, parsed and validated from JSON.

Shapes: D = number of devices, N = number of nodes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ir.errors import PortableMoeError


class BalanceError(PortableMoeError):
    """Bad input to the load balancer; the message names the problem."""


DEVICE_FIELDS = ("name", "vendor", "model", "node", "throughput", "memory_bytes")


@dataclass(frozen=True)
class ClusterDevice:
    name: str
    vendor: str
    model: str
    node: int
    throughput: float
    memory_bytes: int


@dataclass(frozen=True)
class Cluster:
    devices: tuple[ClusterDevice, ...]

    def __post_init__(self):
        if not self.devices:
            raise BalanceError("cluster has no devices")

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def throughput(self) -> np.ndarray:
        """[D] float64 tokens per unit time."""
        return np.array([d.throughput for d in self.devices], dtype=np.float64)

    @property
    def node(self) -> np.ndarray:
        """[D] int64 node index, renumbered 0..N-1 in order of first appearance of each node id."""
        ids = [d.node for d in self.devices]
        order = {n: i for i, n in enumerate(dict.fromkeys(ids))}
        return np.array([order[n] for n in ids], dtype=np.int64)

    @property
    def node_ids(self) -> list[int]:
        """[N] the node ids as written in the cluster file (index n of `node` maps to node_ids[n])."""
        return list(dict.fromkeys(d.node for d in self.devices))

    @property
    def num_nodes(self) -> int:
        return len(self.node_ids)

    def slots(self, expert_bytes: int) -> np.ndarray:
        """[D] int64 expert slots per device = memory_bytes // expert_bytes."""
        check_expert_bytes(expert_bytes)
        return np.array([d.memory_bytes // expert_bytes for d in self.devices], dtype=np.int64)

    def node_fraction(self) -> np.ndarray:
        """[N] share of tokens originating on each node (uniform over devices)."""
        counts = np.bincount(self.node, minlength=self.num_nodes).astype(np.float64)
        return counts / counts.sum()

    def to_json(self) -> dict:
        return {"devices": [{f: getattr(d, f) for f in DEVICE_FIELDS} for d in self.devices]}


def check_expert_bytes(expert_bytes) -> int:
    if isinstance(expert_bytes, bool) or not isinstance(expert_bytes, (int, np.integer)) or expert_bytes <= 0:
        raise BalanceError(f"expert_bytes must be a positive integer, got {expert_bytes!r}")
    return int(expert_bytes)


def _device_from_json(i: int, obj) -> ClusterDevice:
    if not isinstance(obj, dict):
        raise BalanceError(f"cluster device {i}: expected an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(DEVICE_FIELDS))
    if unknown:
        raise BalanceError(
            f"cluster device {i}: unknown field {unknown[0]!r} (allowed: {', '.join(DEVICE_FIELDS)})"
        )
    missing = [f for f in DEVICE_FIELDS if f not in obj]
    if missing:
        raise BalanceError(f"cluster device {i}: missing field {missing[0]!r}")
    for f in ("name", "vendor", "model"):
        if not isinstance(obj[f], str):
            raise BalanceError(f"cluster device {i}: field {f!r} must be a string")
    node, mem, thr = obj["node"], obj["memory_bytes"], obj["throughput"]
    if isinstance(node, bool) or not isinstance(node, int):
        raise BalanceError(f"cluster device {i}: field 'node' must be an integer, got {node!r}")
    if isinstance(mem, bool) or not isinstance(mem, int) or mem < 0:
        raise BalanceError(
            f"cluster device {i}: field 'memory_bytes' must be a non-negative integer, got {mem!r}"
        )
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr) or thr <= 0:
        raise BalanceError(f"cluster device {i}: field 'throughput' must be a positive number, got {thr!r}")
    return ClusterDevice(obj["name"], obj["vendor"], obj["model"], node, float(thr), mem)


def cluster_from_json(obj) -> Cluster:
    """Build a Cluster from the parsed `{"devices": [...]}` object, rejecting unknown fields."""
    if not isinstance(obj, dict):
        raise BalanceError("cluster: expected a JSON object with a 'devices' list")
    unknown = sorted(set(obj) - {"devices"})
    if unknown:
        raise BalanceError(f"cluster: unknown top-level field {unknown[0]!r} (allowed: 'devices')")
    devs = obj.get("devices")
    if not isinstance(devs, list) or not devs:
        raise BalanceError("cluster: 'devices' must be a non-empty list")
    return Cluster(tuple(_device_from_json(i, d) for i, d in enumerate(devs)))


def read_json(path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise BalanceError(f"{what}: cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise BalanceError(f"{what}: {path} is not valid JSON: {e.msg} at line {e.lineno}") from None


def load_cluster(path) -> Cluster:
    return cluster_from_json(read_json(path, "cluster"))
