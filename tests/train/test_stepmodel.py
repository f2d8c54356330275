"""The step-time model against hand-computed cases (bytes per link class, compute, hierarchical all-reduce)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from portable_moe import balance
from portable_moe.balance.placement import LayerPlacement, Placement
from portable_moe.train import stepmodel as sm

WORK = sm.Workload(hidden=8, expert_ffn=4, experts=2, top_k=1, layers=1, dense_params=1000,
                   dense_flops_per_token=60.0, tokens=100, act_bytes=2, dispatch_bytes=1, grad_bytes=4)


def two_vendors(thr=(1e3, 2e3), links: balance.Links | None = None) -> balance.Cluster:
    return balance.Cluster((balance.ClusterDevice("a", "nvidia", "x", 0, thr[0], 10**9),
                            balance.ClusterDevice("b", "amd", "y", 1, thr[1], 10**9)), links or balance.Links())


def one_each() -> Placement:
    return Placement([LayerPlacement(np.array([0, 1]), np.array([0, 1]), np.ones(2))], 2, 10)


def test_hand_computed_step():
    links = balance.Links(same_node=100.0, other_node=10.0, other_vendor=1.0)
    pred = sm.predict(two_vendors(links=links), WORK, one_each(), latency_s=0.0)
    # each rank: 50 tokens, half of them to the other rank's expert (one row each, out and back, fwd + bwd)
    row = (2 * 8 + 1) * 1 + 2 * 8 * 2
    assert pred.bridge_bytes == pytest.approx(2 * 25 * row + 2 * 1000 * 4)   # tokens + the leaders' ring
    assert pred.all_to_all_s == pytest.approx([25 * row / 1e9] * 2)
    compute = 50 * 60.0 + 50 * sm.EXPERT_FLOPS * 8 * 4
    assert pred.compute_s == pytest.approx([compute / 1e3, compute / 2e3])
    assert pred.all_reduce_s == pytest.approx(1000 * 4 / 1e9)
    assert pred.serial_s == pytest.approx(compute / 1e3 + 25 * row / 1e9 + 4000 / 1e9)
    assert pred.overlap_s == pytest.approx(compute / 1e3)
    assert sm.fluid_bound(two_vendors(), WORK) == pytest.approx(100 * (60 + sm.EXPERT_FLOPS * 32) / 3e3)


def test_island_routing_keeps_tokens_home_and_trades_for_gradient_sync():
    both = Placement([LayerPlacement(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]), np.full(4, 0.5),
                                     np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))], 2, 10)
    home = sm.predict(two_vendors(), WORK, both, routing="island", latency_s=0.0)
    away = sm.predict(two_vendors(), WORK, both, routing="global", latency_s=0.0)
    grads = (1000 + 2 * 3 * 8 * 4) * 4
    assert home.bridge_bytes == pytest.approx(2 * grads) and home.all_to_all_s.max() == 0
    assert away.bridge_bytes > home.bridge_bytes


def test_sharded_bridge_spreads_the_leaders_ring_over_the_island():
    vendors = ["nvidia"] * 2 + ["amd"] * 2
    devs = tuple(balance.ClusterDevice(f"g{i}", v, "x", i // 2, 1.0, 10**9) for i, v in enumerate(vendors))
    leaders = sm.all_reduce_time(balance.Cluster(devs), 1e6, 0)
    sharded = sm.all_reduce_time(balance.Cluster(devs), 1e6, 0, sharded_bridge=True)
    inside = (1e6 + 0.5e6) / 400e9   # ring of 2 in the node, then the leader's broadcast
    assert leaders[0] == pytest.approx(inside + 1e6 / 3e9)
    assert sharded[0] == pytest.approx(inside + 0.5e6 / 3e9)


def test_the_cluster_files_links_set_the_bandwidths(tmp_path):
    path = tmp_path / "cluster.json"
    devs = [{"name": f"g{i}", "vendor": v, "model": "x", "node": i, "throughput": 1.0, "memory_bytes": 1000}
            for i, v in enumerate(("nvidia", "amd"))]
    path.write_text(json.dumps({"devices": devs, "links": {"other_vendor": 25}}))
    seconds, bridge_bytes, _ = sm.all_reduce_time(balance.load_cluster(path), 1e6, 0)
    assert bridge_bytes == pytest.approx(2 * 1e6) and seconds == pytest.approx(1e6 / 25e9)  # 2 leaders' ring
