"""A step-time model of expert-parallel training on a cluster we may not have: per rank, compute from
device throughput; token dispatch/combine (forward and backward) per link class; the hierarchical
gradient all-reduce (inside islands, then between island leaders over the bridge); with and without
overlap of communication and compute. Calibrated against measured CPU runs (benchmarks/) and used to
project placements onto 16- and 64-GPU mixed clusters.

Cluster: the balancer's cluster JSON, `throughput` read as achieved FLOP/s of the device (declare it so),
plus the optional `"links"` object: GB/s per device and direction for `same_node`, `other_node` (same
vendor) and `other_vendor` (the bridge). Islands are vendors (the cluster's `vendor` field).

Legend: L layers, E experts, W ranks (= devices), K top-k, H hidden, F expert FFN width."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import balance
from ..models import MoEConfig
from .config import TrainError
from .islands import route_tables

LINK_CLASSES = ("same_node", "other_node", "other_vendor")
A2A_CALLS_PER_LAYER = 6    # counts, metadata, dispatch, combine; backward: combine and dispatch again
EXPERT_FLOPS = 18          # per routed pair and H*F: 2 * (2HF + HF) forward, x3 with backward


@dataclass(frozen=True)
class Links:
    """GB/s per device and direction per link class, and seconds of latency per collective call."""

    same_node: float = 400.0
    other_node: float = 50.0
    other_vendor: float = 3.0
    latency_s: float = 20e-6

    def bandwidth(self, cls: int) -> float:
        return (self.same_node, self.other_node, self.other_vendor)[cls] * 1e9


def links_from_json(obj: dict | None, latency_s: float = 20e-6) -> Links:
    """The cluster file's optional "links" (branch balance owns the full parser; this reads the same keys)."""
    obj = obj or {}
    unknown = sorted(set(obj) - set(LINK_CLASSES))
    if unknown:
        raise TrainError(f"cluster links: unknown class {unknown[0]!r} (allowed: {', '.join(LINK_CLASSES)})")
    for k, v in obj.items():
        if not isinstance(v, (int, float)) or not v > 0:
            raise TrainError(f"cluster links: {k!r} must be a positive number of GB/s, got {v!r}")
    return Links(**{k: float(v) for k, v in obj.items()}, latency_s=latency_s)


def load_cluster(path) -> tuple[balance.Cluster, Links]:
    """A cluster file with its optional "links"; until the balancer's own reader takes "links" (branch
    balance), the devices go to it and the links are read here."""
    from ..balance.cluster import read_json

    obj = read_json(path, "cluster")
    if not isinstance(obj, dict):
        raise TrainError(f"{path}: expected a JSON object with a 'devices' list")
    rest = {k: v for k, v in obj.items() if k != "links"}
    return balance.cluster_from_json(rest), links_from_json(obj.get("links"))


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


def link_class(devices, a: int, b: int) -> int:
    if devices[a].vendor != devices[b].vendor:
        return 2
    return 0 if devices[a].node == devices[b].node else 1


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


def predict(cluster: balance.Cluster, links: Links, work: Workload, placement: balance.Placement,
            routing: str = "global", loads: np.ndarray | None = None, sharded_bridge: bool = False) -> StepPrediction:
    """The step time of `placement` on `cluster` (throughput = achieved FLOP/s) for `work`; `loads` [L, E]
    are relative expert loads (uniform when None); routing 'island' follows the plan's by_node, whose nodes
    are the vendor islands in order of first appearance. sharded_bridge: every rank carries 1/n of its
    island's bridge traffic (reduce-scatter, bridge, all-gather: not what Comm does today, which sends it
    all through the island leaders)."""
    devs, W = cluster.devices, cluster.num_devices
    L, E = placement.num_layers, placement.num_experts
    frac_LE = np.ones((L, E)) if loads is None else np.asarray(loads, float)
    frac_LE = frac_LE / frac_LE.sum(1, keepdims=True)
    names = [d.vendor for d in devs]
    node = np.array([list(dict.fromkeys(names)).index(v) for v in names])  # islands, numbered like by_node
    T_r = work.tokens / W
    cls_WW = np.array([[link_class(devs, a, b) for b in range(W)] for a in range(W)])
    pairs_W = np.zeros(W)                       # routed pairs each rank serves
    out_bytes = np.zeros((W, 3))                # per rank, bytes sent per link class
    in_bytes = np.zeros((W, 3))
    row = (2 * work.hidden + work.top_k) * work.dispatch_bytes + 2 * work.hidden * work.act_bytes
    for n in sorted(set(node.tolist())):
        route_LEW = route_tables(placement, W, n, routing).numpy()
        p_LW = np.einsum("le,lew->lw", frac_LE, route_LEW)           # chance one pair of a token lands on w
        rows_W = T_r * (1 - (1 - p_LW) ** work.top_k).sum(0)          # token rows sent to w, all layers
        pairs_W += (node == n).sum() * T_r * work.top_k * p_LW.sum(0)
        for r in np.flatnonzero(node == n):
            for d in range(W):
                if d != r:
                    out_bytes[r, cls_WW[r, d]] += rows_W[d] * row
                    in_bytes[d, cls_WW[r, d]] += rows_W[d] * row
    bw = np.array([links.bandwidth(c) for c in range(3)])
    a2a = (np.maximum(out_bytes, in_bytes) / bw).max(1) + A2A_CALLS_PER_LAYER * L * links.latency_s
    compute = (T_r * work.dense_flops_per_token + pairs_W * EXPERT_FLOPS * work.hidden * work.expert_ffn) \
        / cluster.throughput
    count, _ = placement.dense(W)
    replicated = int(((count > 0).sum(-1) > 1).sum())
    grads = (work.dense_params + replicated * work.expert_params) * work.grad_bytes
    ar, ar_bridge, ar_island = all_reduce_time(cluster, links, grads, L + 3, sharded_bridge)
    return StepPrediction(compute, a2a, ar, float(out_bytes[:, 2].sum() + ar_bridge),
                          float(out_bytes[:, :2].sum() + ar_island))


def all_reduce_time(cluster: balance.Cluster, links: Links, nbytes: float, calls: int,
                    sharded_bridge: bool = False) -> tuple[float, float, float]:
    """Hierarchical all-reduce of nbytes: ring inside each island (its slowest link), ring between island
    leaders over the bridge, broadcast inside each island -> (seconds, bridge bytes, island bytes)."""
    devs = cluster.devices
    islands: dict[str, list[int]] = {}
    for i, d in enumerate(devs):
        islands.setdefault(d.vendor, []).append(i)
    ring = lambda n: 2.0 * (n - 1) / n * nbytes if n > 1 else 0.0  # noqa: E731
    inside = max((ring(len(r)) + nbytes * (len(r) - 1) / len(r)) /
                 links.bandwidth(max(link_class(devs, r[0], b) for b in r)) for r in islands.values())
    m = len(islands)
    lanes = min(len(r) for r in islands.values()) if sharded_bridge else 1
    bridge = ring(m) / lanes / links.bandwidth(2) if m > 1 else 0.0
    biggest = max(len(r) for r in islands.values())
    stages = (2 if biggest > 1 else 0) + (1 if m > 1 else 0) if m > 1 else 1
    island_bytes = sum(len(r) * (ring(len(r)) + nbytes * (len(r) - 1) / len(r)) for r in islands.values())
    return inside + bridge + calls * stages * links.latency_s, m * ring(m), island_bytes


def fluid_bound(cluster: balance.Cluster, work: Workload) -> float:
    """Compute only, spread over the devices in proportion to throughput: no step can be faster."""
    expert = work.layers * work.top_k * EXPERT_FLOPS * work.hidden * work.expert_ffn
    flops = work.tokens * (work.dense_flops_per_token + expert)
    return flops / cluster.throughput.sum()
