"""A step-time model of expert-parallel training on a cluster we may not have: per rank, compute from
device throughput; token dispatch/combine (forward and backward) per link class; the hierarchical
gradient all-reduce (inside islands, then between island leaders over the bridge); with and without
overlap of communication and compute. Calibrated against measured CPU runs (benchmarks/) and used to
project placements onto 16- and 64-GPU mixed clusters.

Cluster: the balancer's (`balance.load_cluster`), `throughput` read as achieved FLOP/s of the device
(declare it so); its `links` give GB/s per device and direction for `same_node`, `other_node` (same vendor)
and `other_vendor` (the bridge). Islands are vendors (the cluster's `vendor` field).

Legend: L layers, E experts, W ranks (= devices), K top-k, H hidden, F expert FFN width."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import balance
from ..balance.comm import link_times
from ..models import MoEConfig
from .islands import ring_bytes, route_tables

A2A_CALLS_PER_LAYER = 6    # counts, metadata, dispatch, combine; backward: combine and dispatch again
LATENCY_S = 20e-6          # per collective call
EXPERT_FLOPS = 18          # per routed pair and H*F: 2 * (2HF + HF) forward, x3 with backward


@dataclass(frozen=True)
class Workload:
    """One optimizer step: `tokens` in all, split evenly over ranks; activations of `act_bytes` per element
    (dispatch may use fewer: `dispatch_bytes`), gradients reduced in `grad_bytes` per element."""

    hidden: int
    expert_ffn: int
    experts: int
    top_k: int
    layers: int
    dense_params: int        # per replica: everything but routed experts (all data-parallel)
    dense_flops_per_token: float
    tokens: int
    act_bytes: int = 2
    dispatch_bytes: int = 2
    grad_bytes: int = 2

    @property
    def expert_params(self) -> int:
        return 3 * self.hidden * self.expert_ffn


def workload_of(m: MoEConfig, tokens: int, seq: int, act_bytes: int = 2, dispatch_bytes: int = 2,
                grad_bytes: int = 2) -> Workload:
    """Dense parameters and FLOPs of a portable_moe model config (attention, router, shared expert, LM head)."""
    attn = m.hidden * m.head_dim * (2 * m.heads + 2 * m.kv_heads)
    per_layer = attn + m.hidden * m.experts + 3 * m.hidden * m.shared_ffn
    matmul = m.layers * per_layer + m.vocab_size * m.hidden
    scores = m.layers * 4 * seq * m.heads * m.head_dim  # q.k and p.v, forward, per token (causal: half of S)
    flops = 6 * matmul + 3 * scores / 2
    return Workload(m.hidden, m.expert_ffn, m.experts, m.top_k, m.layers, matmul + m.vocab_size * m.hidden,
                    flops, tokens, act_bytes, dispatch_bytes, grad_bytes)


@dataclass
class StepPrediction:
    compute_s: np.ndarray        # [W]
    all_to_all_s: np.ndarray     # [W]
    all_reduce_s: float
    bridge_bytes: float          # summed over ranks, per step
    island_bytes: float

    @property
    def serial_s(self) -> float:
        return float((self.compute_s + self.all_to_all_s).max() + self.all_reduce_s)

    @property
    def overlap_s(self) -> float:
        return float(np.maximum(self.compute_s, self.all_to_all_s + self.all_reduce_s).max())


def predict(cluster: balance.Cluster, work: Workload, placement: balance.Placement, routing: str = "global",
            loads: np.ndarray | None = None, sharded_bridge: bool = False, latency_s: float = LATENCY_S
            ) -> StepPrediction:
    """The step time of `placement` on `cluster` (throughput = achieved FLOP/s, bandwidth = cluster.links)
    for `work`; `loads` [L, E] are relative expert loads (uniform when None); routing 'island' follows the
    plan's by_node, whose nodes are the vendor islands in order of first appearance. sharded_bridge: every
    rank carries 1/n of its island's bridge traffic (reduce-scatter, bridge, all-gather: not what Comm does
    today, which sends it all through the island leaders). latency_s: seconds per collective call."""
    W = cluster.num_devices
    L, E = placement.num_layers, placement.num_experts
    frac_LE = np.ones((L, E)) if loads is None else np.asarray(loads, float)
    frac_LE = frac_LE / frac_LE.sum(1, keepdims=True)
    island = cluster.island                     # numbered like by_node
    T_r = work.tokens / W
    pairs_W = np.zeros(W)                       # routed pairs each rank serves
    sent_WW = np.zeros((W, W))                  # bytes rank s sends to rank d (and receives back)
    row = (2 * work.hidden + work.top_k) * work.dispatch_bytes + 2 * work.hidden * work.act_bytes
    for n in range(int(island.max()) + 1):
        route_LEW = route_tables(placement, W, n, routing).numpy()
        p_LW = np.einsum("le,lew->lw", frac_LE, route_LEW)           # chance one pair of a token lands on w
        rows_W = T_r * (1 - (1 - p_LW) ** work.top_k).sum(0)          # token rows sent to w, all layers
        pairs_W += (island == n).sum() * T_r * work.top_k * p_LW.sum(0)
        sent_WW[island == n] = rows_W * row
    secs, per_class = link_times(sent_WW[None], cluster, 1)           # the balancer's per-class link model
    a2a = secs[0].max(1) + A2A_CALLS_PER_LAYER * L * latency_s
    compute = (T_r * work.dense_flops_per_token + pairs_W * EXPERT_FLOPS * work.hidden * work.expert_ffn) \
        / cluster.throughput
    count, _ = placement.dense(W)
    replicated = int(((count > 0).sum(-1) > 1).sum())
    grads = (work.dense_params + replicated * work.expert_params) * work.grad_bytes
    ar, ar_bridge, ar_island = all_reduce_time(cluster, grads, L + 3, sharded_bridge, latency_s)
    return StepPrediction(compute, a2a, ar, float(per_class[0, 2] + ar_bridge),
                          float(per_class[0, :2].sum() + ar_island))


def all_reduce_time(cluster: balance.Cluster, nbytes: float, calls: int, sharded_bridge: bool = False,
                    latency_s: float = LATENCY_S) -> tuple[float, float, float]:
    """Hierarchical all-reduce of nbytes: ring inside each island (its slowest link), ring between island
    leaders over the bridge, broadcast inside each island -> (seconds, bridge bytes, island bytes); the
    bytes are those Comm counts (islands.ring_bytes)."""
    island, cls, bw = cluster.island, cluster.link_class(), cluster.links.bandwidth()
    islands = [np.flatnonzero(island == i) for i in range(int(island.max()) + 1)]
    home = lambda n: ring_bytes(nbytes, n) + nbytes * (n - 1) / n  # noqa: E731 - ring, then the broadcast
    inside = max(home(len(r)) / bw[max(int(cls[np.ix_(r, r)].max()), 0)] for r in islands)
    m = len(islands)
    lanes = min(len(r) for r in islands) if sharded_bridge else 1
    bridge = ring_bytes(nbytes, m) / lanes / bw[2] if m > 1 else 0.0
    biggest = max(len(r) for r in islands)
    stages = (2 if biggest > 1 else 0) + (1 if m > 1 else 0) if m > 1 else 1
    island_bytes = sum(len(r) * home(len(r)) for r in islands)
    return inside + bridge + calls * stages * latency_s, m * ring_bytes(nbytes, m), island_bytes


def fluid_bound(cluster: balance.Cluster, work: Workload) -> float:
    """Compute only, spread over the devices in proportion to throughput: no step can be faster."""
    expert = work.layers * work.top_k * EXPERT_FLOPS * work.hidden * work.expert_ffn
    flops = work.tokens * (work.dense_flops_per_token + expert)
    return flops / cluster.throughput.sum()
