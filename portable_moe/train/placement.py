"""The one adapter between the load balancer (portable_moe.balance) and training: a cluster made of
this job's ranks, the initial placement, and a Placement read as dense tables.

Legend: L layers, E experts, W ranks (= the cluster's devices, in rank order)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import balance
from .config import TrainConfig
from .islands import device_of, island_index, island_plan, vendor_of

HEADROOM = 1.5  # expert slots per rank: 1.5x its speed-proportional share, so hot experts can be replicated


def cluster_of(cfg: TrainConfig, layers: int, experts: int, expert_bytes: int) -> balance.Cluster:
    """The job's ranks as the balancer's devices, vendor islands as its nodes; memory is sized in expert
    slots per layer (speed-proportional with headroom; memory_bytes covers all layers) so the plan spreads
    experts instead of copying every expert everywhere. With placement=islands the speed share is taken
    inside the rank's island (one copy of the experts per island)."""
    speeds = [cfg.speed(r) for r in range(cfg.world)]
    node = island_index(cfg.devices)
    total = [sum(s for s, n in zip(speeds, node) if cfg.placement != "islands" or n == node[r])
             for r in range(cfg.world)]
    slots = [max(1, math.ceil(HEADROOM * experts * s / t)) for s, t in zip(speeds, total)]
    return balance.Cluster(tuple(balance.ClusterDevice(name=f"rank{r}", vendor=vendor_of(d), model=device_of(d),
                                                       node=node[r], throughput=speeds[r],
                                                       memory_bytes=slots[r] * layers * expert_bytes)
                                 for r, d in enumerate(cfg.devices)))


def initial(cfg: TrainConfig, layers: int, experts: int, expert_bytes: int) -> balance.Placement:
    """even: one copy per expert, round-robin. balanced: the balancer's plan for uniform load on these
    ranks' speeds (uneven expert counts and replicas in proportion to speed). islands: that plan inside
    each vendor island, every island serving its own tokens."""
    uniform = np.ones((layers, experts))
    if cfg.placement == "islands":
        return island_plan(uniform, cluster_of(cfg, layers, experts, expert_bytes), expert_bytes)
    if cfg.placement == "even":
        return balance.even_placement(uniform, cluster_of(cfg, layers, experts, expert_bytes), expert_bytes)
    return balance.plan(uniform, cluster_of(cfg, layers, experts, expert_bytes), expert_bytes)


def replan(loads: np.ndarray, cfg: TrainConfig, expert_bytes: int,
           previous: balance.Placement | None = None) -> balance.Placement:
    """From observed loads [L, E]; with `previous`, incrementally within cfg.max_move_bytes."""
    cluster = cluster_of(cfg, *loads.shape, expert_bytes)
    if cfg.placement == "islands":
        return island_plan(loads, cluster, expert_bytes, previous, cfg.max_move_bytes)
    if previous is None:
        return balance.plan(loads, cluster, expert_bytes)
    return balance.plan(loads, cluster, expert_bytes, previous=previous, max_move_bytes=cfg.max_move_bytes)


def tables(placement: balance.Placement, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> share_LEW (fraction of expert e's tokens served on rank d), hosts_LEW (rank d holds expert e).
    Reads only the public JSON form, so the balancer's internals may change freely."""
    obj = placement.to_json()
    L, E = len(obj["layers"]), obj["num_experts"]
    share, hosts = torch.zeros(L, E, world, dtype=torch.float64), torch.zeros(L, E, world, dtype=torch.bool)
    for i, layer in enumerate(obj["layers"]):
        for rep in layer["replicas"]:
            share[i, rep["expert"], rep["device"]] += rep["share"]
            hosts[i, rep["expert"], rep["device"]] = True
    return share / share.sum(-1, keepdim=True).clamp_min(1e-12), hosts


def from_json(obj: dict, cfg: TrainConfig) -> balance.Placement:
    cluster = cluster_of(cfg, len(obj["layers"]), obj["num_experts"], obj["expert_bytes"])
    return balance.placement_from_json(obj, cluster)
