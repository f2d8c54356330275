"""Vendor islands: which ranks share a native interconnect, the bridge between them, and routing
that keeps tokens inside an island where the placement allows.

A rank's device may carry an island label (`cpu@amd`): ranks with the same label form one island
(emulation on one machine); without a label a rank's island is its device's vendor, so same-vendor GPU
ranks share NCCL/RCCL and only the island leaders talk over the bridge (gloo).

Legend: L layers, E experts, W ranks, N islands (the balancer's nodes)."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .. import balance
from ..balance.cluster import first_appearance
from ..balance.placement import placement_from_dense
from .config import ROUTINGS, TrainError


def split_device(spec: str) -> tuple[str, str]:
    """'cpu@amd' -> ('cpu', 'amd'); 'cuda:0' -> ('cuda:0', '')."""
    device, _, label = spec.partition("@")
    if "@" in label or (spec.endswith("@") and not label):
        raise TrainError(f"device {spec!r}: write DEVICE or DEVICE@ISLAND, e.g. cpu@amd")
    return device, label


def device_of(spec: str) -> str:
    return split_device(spec)[0]


def vendor_of(device: str) -> str:
    kind = device_of(device).split(":")[0]
    if kind == "cuda" and getattr(torch.version, "hip", None):
        return "rocm"
    return kind


def island_names(devices) -> list[str]:
    """Island of each rank: its label, or its device's vendor. An island's ranks share one vendor."""
    names = [split_device(d)[1] or vendor_of(d) for d in devices]
    for name in dict.fromkeys(names):
        kinds = {vendor_of(d) for d, n in zip(devices, names) if n == name}
        if len(kinds) > 1:
            raise TrainError(f"island {name!r} mixes device kinds {sorted(kinds)}; one island = one vendor's devices")
    return names


def island_index(devices) -> list[int]:
    """[W] island number of each rank, in order of first appearance (the balancer's node ids)."""
    return first_appearance(island_names(devices))


class Bridge:
    """Emulates a slower bridge: after a transfer, sleep bytes / bandwidth (GB/s = 1e9 bytes/s per rank
    and direction). Delays under MIN_SLEEP_S are carried over and slept together: on a loaded machine
    every sleep can cost a scheduler time slice, which would swamp microsecond delays. gbps 0 = as fast
    as the underlying transport."""

    MIN_SLEEP_S = 2e-3

    def __init__(self, gbps: float):
        if gbps < 0 or not math.isfinite(gbps):
            raise TrainError(f"bridge_gbps={gbps!r} must be a finite number >= 0 (0 = no slowdown)")
        self.gbps, self.owed = gbps, 0.0

    def delay(self, nbytes: float):
        if self.gbps > 0 and nbytes > 0:
            self.owed += nbytes / (self.gbps * 1e9)
            if self.owed >= self.MIN_SLEEP_S:
                time.sleep(self.owed)
                self.owed = 0.0


class Traffic:
    """One rank's counters for the current step: bytes it sent over the bridge and inside its island,
    (token_bridge_bytes: the all-to-all's share of the bridge bytes), seconds in all-to-all and in
    all-reduce, and how many all-reduces ran hierarchically."""

    FIELDS = ("bridge_bytes", "island_bytes", "token_bridge_bytes", "all_to_all_s", "all_reduce_s",
              "hierarchical_all_reduces")

    def __init__(self):
        self.reset()

    def reset(self):
        for f in self.FIELDS:
            setattr(self, f, 0)

    def as_list(self) -> list[float]:
        return [float(getattr(self, f)) for f in self.FIELDS]


def ring_bytes(nbytes: int, members: int) -> float:
    """Bytes one rank sends in a ring all-reduce of `nbytes` among `members` ranks."""
    return 2.0 * (members - 1) / members * nbytes if members > 1 else 0.0


# -- routing -----------------------------------------------------------------------------------------

def route_tables(placement: balance.Placement, world: int, island: int, routing: str) -> torch.Tensor:
    """-> share_LEW: the fraction of *this island's* tokens of expert e that rank d serves. Island
    routing reads the placement's by_node (islands as nodes); global routing (or a placement without
    by_node) uses the token-weighted `share`, the same for every source."""
    assert routing in ROUTINGS, routing
    obj = placement.to_json()
    L, E = len(obj["layers"]), obj["num_experts"]
    out = torch.zeros(L, E, world, dtype=torch.float64)
    use_nodes = routing == "island" and all("by_node" in r for lay in obj["layers"] for r in lay["replicas"])
    for i, layer in enumerate(obj["layers"]):
        for rep in layer["replicas"]:
            frac = rep["by_node"].get(str(island), 0.0) if use_nodes else rep["share"]
            out[i, rep["expert"], rep["device"]] += frac
    return out / out.sum(-1, keepdim=True).clamp_min(1e-12)


# -- island-aware placement ----------------------------------------------------------------------------

def island_plan(loads: np.ndarray, cluster: balance.Cluster, expert_bytes: int,
                previous: balance.Placement | None = None, max_move_bytes: int | None = None) -> balance.Placement:
    """Each island gets its own copy of every expert, balanced over its ranks' speeds for the island's own
    tokens (the balancer on the island alone); each island's tokens stay home (by_node), so only gradients
    of replicated experts and dense weights cross the bridge. Refused when an island cannot hold one copy
    of every expert: then the global plan (`balanced`) with by_node is the choice."""
    node, frac = cluster.node, cluster.node_fraction()
    L, E = loads.shape
    D, N = cluster.num_devices, len(frac)
    host, by_node, moved = np.zeros((L, E, D), bool), np.zeros((L, E, D, N)), 0
    for n in range(N):
        ranks = np.flatnonzero(node == n)
        sub = balance.Cluster(tuple(cluster.devices[r] for r in ranks))
        slots = int((sub.budget(expert_bytes) // L).sum())
        if slots < E:
            raise TrainError(f"placement=islands: island {n} ({len(ranks)} ranks) has {slots} expert slots for "
                             f"{E} experts per layer; use placement=balanced")
        prev = None if previous is None else _island_part(previous, D, ranks, n)
        budget = None if max_move_bytes is None else max_move_bytes // N
        p = balance.plan(loads * frac[n], sub, expert_bytes, previous=prev, max_move_bytes=budget)
        count, share = p.dense(len(ranks))
        host[:, :, ranks], by_node[:, :, ranks, n] = count > 0, share
        moved += p.moved_bytes
    share = by_node @ frac
    pl = placement_from_dense(host, share, by_node, expert_bytes)
    pl.moved_bytes = moved
    pl.predicted = balance.predict(pl, loads, cluster)
    return pl


def _island_part(previous: balance.Placement, world: int, ranks: np.ndarray, n: int) -> balance.Placement:
    """The previous placement as seen by island n alone: its ranks' replicas and their by_node[n] shares."""
    count, share = previous.dense(world)
    bn = np.zeros(share.shape)
    for i, lp in enumerate(previous.layers):
        if lp.by_node is not None:
            np.add.at(bn[i], (lp.expert, lp.device), lp.by_node[:, n])
    sub_share = bn[:, :, ranks] if bn.any() else share[:, :, ranks]
    sub_host = count[:, :, ranks] > 0
    sub_share = sub_share / np.maximum(sub_share.sum(-1, keepdims=True), 1e-300)
    return placement_from_dense(sub_host, sub_share, None, previous.expert_bytes)
