"""Cluster model: devices with throughput and memory, link bandwidths per class, parsed and validated from JSON.

Shapes: D = number of devices, N = number of nodes, I = number of vendor islands.
Units: throughput in token copies per second (one token routed to one expert), memory in bytes for the
routed-expert weights of all layers together, link bandwidth in GB/s per device and direction.
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
LINK_CLASSES = ("same_node", "other_node", "other_vendor")
MAX_THROUGHPUT = 1e18  # token copies / s: far above any device, low enough that sums of D devices stay finite
MAX_MEMORY_BYTES = 2**62  # fits int64 with room for sums over devices


@dataclass(frozen=True)
class Links:
    """GB/s per device and direction for each link class. Defaults: NVLink / Infinity Fabric inside a node,
    InfiniBand between nodes of one vendor, the host-memory (gloo) bridge between vendors."""

    same_node: float = 400.0
    other_node: float = 50.0
    other_vendor: float = 3.0

    def bandwidth(self) -> np.ndarray:
        """[3] bytes / s, in LINK_CLASSES order."""
        return np.array([self.same_node, self.other_node, self.other_vendor]) * 1e9


@dataclass(frozen=True)
class ClusterDevice:
    name: str
    vendor: str
    model: str
    node: int
    throughput: float
    memory_bytes: int



def first_appearance(keys) -> list[int]:
    """Each key's number, 0..K-1 in order of first appearance: how vendor islands (and training's
    islands, the balancer's nodes there) are numbered."""
    order = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return [order[k] for k in keys]

@dataclass(frozen=True)
class Cluster:
    devices: tuple[ClusterDevice, ...]
    links: Links = Links()

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

    @property
    def island(self) -> np.ndarray:
        """[D] int64 vendor island index, 0..I-1 in order of first appearance of each vendor."""
        return np.array(first_appearance([d.vendor for d in self.devices]), dtype=np.int64)

    def budget(self, expert_bytes: int) -> np.ndarray:
        """[D] int64 expert copies each device can hold, all layers together = memory_bytes // expert_bytes
        (at most 2**40: more than any plan places, and sums over devices stay in int64)."""
        check_expert_bytes(expert_bytes)
        return np.array([min(d.memory_bytes // expert_bytes, 1 << 40) for d in self.devices], dtype=np.int64)

    def link_class(self) -> np.ndarray:
        """[D, D] int64 index into LINK_CLASSES for traffic between two devices (-1 on the diagonal):
        another vendor crosses the bridge even inside one node."""
        node, vendor = self.node, self.island
        cls = np.where(vendor[:, None] != vendor[None, :], 2, np.where(node[:, None] == node[None, :], 0, 1))
        np.fill_diagonal(cls, -1)
        return cls

    def node_fraction(self) -> np.ndarray:
        """[N] share of tokens originating on each node (uniform over devices)."""
        counts = np.bincount(self.node, minlength=self.num_nodes).astype(np.float64)
        return counts / counts.sum()

    def to_json(self) -> dict:
        return {"devices": [{f: getattr(d, f) for f in DEVICE_FIELDS} for d in self.devices],
                "links": {c: getattr(self.links, c) for c in LINK_CLASSES}}


def check_expert_bytes(expert_bytes) -> int:
    if (isinstance(expert_bytes, bool) or not isinstance(expert_bytes, (int, np.integer))
            or not 0 < expert_bytes <= MAX_MEMORY_BYTES):
        raise BalanceError(f"expert_bytes must be an integer from 1 to 2**62, got {_short(expert_bytes)}")
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
    if isinstance(mem, bool) or not isinstance(mem, int) or not 0 <= mem <= MAX_MEMORY_BYTES:
        raise BalanceError(
            f"cluster device {i}: field 'memory_bytes' must be an integer from 0 to 2**62, got {_short(mem)}"
        )
    if not _positive_number(thr, MAX_THROUGHPUT):
        raise BalanceError(
            f"cluster device {i}: field 'throughput' must be a number from 1e-06 to {MAX_THROUGHPUT:g} "
            f"(token copies / s), got {_short(thr)}"
        )
    return ClusterDevice(obj["name"], obj["vendor"], obj["model"], node, float(thr), mem)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:20] + f"... ({len(text)} characters)"


def finite_number(x, low: float, high: float) -> bool:
    """x is an int or float (not bool) with low <= x <= high; never converts a huge int to float."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    if isinstance(x, int):
        return low <= x <= high
    return math.isfinite(x) and low <= x <= high


def _positive_number(x, limit: float) -> bool:
    return finite_number(x, 1e-6, limit)  # a lower bound too: 1 / tiny values must stay finite


def _links_from_json(obj) -> Links:
    if not isinstance(obj, dict):
        raise BalanceError("cluster: 'links' must be an object of link class -> GB/s")
    unknown = sorted(set(obj) - set(LINK_CLASSES))
    if unknown:
        raise BalanceError(f"cluster links: unknown class {unknown[0]!r} (allowed: {', '.join(LINK_CLASSES)})")
    for c, v in obj.items():
        if not _positive_number(v, 1e9):
            raise BalanceError(f"cluster links: {c!r} must be a number of GB/s from 1e-06 to 1e9, got {_short(v)}")
    return Links(**{c: float(v) for c, v in obj.items()})


def cluster_from_json(obj) -> Cluster:
    """Build a Cluster from the parsed `{"devices": [...], "links": {...}}` object, rejecting unknown fields."""
    if not isinstance(obj, dict):
        raise BalanceError("cluster: expected a JSON object with a 'devices' list")
    unknown = sorted(set(obj) - {"devices", "links"})
    if unknown:
        raise BalanceError(f"cluster: unknown top-level field {unknown[0]!r} (allowed: 'devices', 'links')")
    devs = obj.get("devices")
    if not isinstance(devs, list) or not devs:
        raise BalanceError("cluster: 'devices' must be a non-empty list")
    links = _links_from_json(obj["links"]) if "links" in obj else Links()
    return Cluster(tuple(_device_from_json(i, d) for i, d in enumerate(devs)), links)


def read_json(path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise BalanceError(f"{what}: cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise BalanceError(f"{what}: {path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    except (ValueError, RecursionError) as e:  # over-long integers, undecodable bytes, deep nesting
        raise BalanceError(f"{what}: {path} cannot be read as JSON: {str(e)[:120]}") from None


def load_cluster(path) -> Cluster:
    return cluster_from_json(read_json(path, "cluster"))
