"""EPLB baseline: structure of its output and its failure on memory-tight clusters."""

import numpy as np
import pytest

from portable_moe.balance import BalanceError, Cluster, ClusterDevice, eplb_placement, rebalance_experts


def test_rebalance_structure_hierarchical():
    rng = np.random.default_rng(0)
    w = rng.lognormal(0, 1, (3, 16)) * 10
    phy2log, log2phy, logcnt = rebalance_experts(w, 24, 4, 2, 4)
    assert phy2log.shape == (3, 24) and logcnt.shape == (3, 16)
    assert (logcnt >= 1).all() and (logcnt.sum(1) == 24).all()
    for i in range(3):
        assert (np.bincount(phy2log[i], minlength=16) == logcnt[i]).all()
        for e in range(16):
            phys = log2phy[i, e][log2phy[i, e] >= 0]
            assert (phy2log[i, phys] == e).all() and len(phys) == logcnt[i, e]
        # each node's 12 replicas come from exactly 2 whole groups (groups to nodes)
        for node in range(2):
            groups = set(phy2log[i, node * 12 : (node + 1) * 12] // 4)
            assert len(groups) == 2


def test_replicates_hottest():
    w = np.array([[100.0, 1, 1, 1]])
    _, _, cnt = rebalance_experts(w, 8, 1, 1, 2)
    assert cnt[0, 0] == 5


def test_global_policy_when_groups_do_not_split():
    w = np.arange(1, 13, dtype=float)[None]
    phy2log, _, cnt = rebalance_experts(w, 12, 3, 2, 2)
    assert sorted(phy2log[0]) == list(range(12))


def test_eplb_placement_and_memory_failure():
    """EPLB gets the same memory as ours, counted over all layers: 3 layers x 1 slot on the smallest device."""
    devs = tuple(ClusterDevice(f"g{i}", "v", "m", i // 2, 1.0, (2 if i else 1) * 30) for i in range(4))
    cl = Cluster(devs)
    with pytest.raises(BalanceError, match=r"smallest device \(1 slots per layer\) x 4 devices = 4 < 6 experts"):
        eplb_placement(np.ones((3, 6)), cl, 10)
    pl = eplb_placement(np.ones((3, 4)), cl, 10)
    assert np.allclose(np.bincount(pl.layers[0].expert, pl.layers[0].share), 1)
    assert pl.layout == "uniform"
    used = pl.predicted["memory"]["used_bytes"]
    assert all(u <= d.memory_bytes for u, d in zip(used, devs)) and used == [30] * 4
