"""Baseline: DeepSeek's EPLB policy, re-implemented from its published description (not copied).

Hierarchical policy: expert groups packed onto nodes (equal group count per node, balanced load), experts
replicated inside each node (each spare slot to the expert with the highest load per replica), replicas packed
heaviest-first onto the lightest GPU of the node with a free slot (equal slots per GPU). When the groups do
not split evenly over nodes the same steps run with one node and one group (global policy). Tokens of an
expert split evenly over its replicas. Shapes: L layers, E logical experts, P physical replicas, X rows.
"""

from __future__ import annotations

import numpy as np

from .cluster import BalanceError, Cluster, check_expert_bytes
from .memory import check_fits
from .placement import LayerPlacement, Placement, predict, validate_loads


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """weight [X, n] -> (pack [X, n], rank inside pack [X, n]); every pack gets n / num_packs items, items go
    heaviest first to the lightest pack that still has room."""
    X, n = weight.shape
    cap = n // num_packs
    rows = np.arange(X)
    pack, rank = np.zeros((X, n), np.int64), np.zeros((X, n), np.int64)
    load, count = np.zeros((X, num_packs)), np.zeros((X, num_packs), np.int64)
    for item in np.argsort(-weight, axis=1, kind="stable").T:  # item [X]
        p = np.where(count < cap, load, np.inf).argmin(1)
        pack[rows, item], rank[rows, item] = p, count[rows, p]
        load[rows, p] += weight[rows, item]
        count[rows, p] += 1
    return pack, rank


def replicate_experts(weight: np.ndarray, num_phy: int) -> tuple[np.ndarray, np.ndarray]:
    """weight [X, n] -> (phy2log [X, num_phy], count [X, n]); spare replicas go to the max load/replica."""
    X, n = weight.shape
    rows = np.arange(X)
    phy2log = np.zeros((X, num_phy), np.int64)
    phy2log[:, :n] = np.arange(n)
    count = np.ones((X, n), np.int64)
    for p in range(n, num_phy):
        e = (weight / count).argmax(1)
        phy2log[:, p] = e
        count[rows, e] += 1
    return phy2log, count


def _inverse(perm: np.ndarray) -> np.ndarray:
    """perm [X, n] permutation rows -> inverse [X, n]."""
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.arange(perm.shape[1])[None, :].repeat(perm.shape[0], 0), axis=1)
    return inv


def rebalance_experts(
    weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """weight [L, E] -> (phy2log [L, P], log2phy [L, E, max count] (-1 padded), logcnt [L, E]).
    Physical replica p lives on GPU p // (P / num_gpus); GPUs are numbered node-major."""
    weight = np.asarray(weight, np.float64)
    L, E = weight.shape
    if num_replicas % num_gpus or num_gpus % num_nodes or num_replicas < E:
        raise BalanceError(
            f"EPLB needs replicas ({num_replicas}) >= experts ({E}), divisible by GPUs "
            f"({num_gpus}), and GPUs divisible by nodes ({num_nodes})"
        )
    if E % num_groups or num_groups % num_nodes:
        num_groups, num_nodes = 1, 1  # global policy
    phy2log = _hierarchical(weight, num_replicas, num_groups, num_nodes, num_gpus)
    logcnt = np.zeros((L, E), np.int64)
    for i in range(L):
        logcnt[i] = np.bincount(phy2log[i], minlength=E)
    log2phy = np.full((L, E, int(logcnt.max())), -1, np.int64)
    order = np.argsort(phy2log, axis=1, kind="stable")
    for i in range(L):
        starts = np.concatenate([[0], np.cumsum(logcnt[i])[:-1]])
        slot = np.arange(num_replicas) - np.repeat(starts, logcnt[i])
        log2phy[i, phy2log[i, order[i]], slot] = order[i]
    return phy2log, log2phy, logcnt


def _hierarchical(weight: np.ndarray, P: int, G: int, N: int, num_gpus: int) -> np.ndarray:
    L, E = weight.shape
    gsize, per_node, gpus_per_node = E // G, E // N, num_gpus // N
    # 1. groups -> nodes; mlog = node-major logical index
    gpack, grank = balanced_packing(weight.reshape(L, G, gsize).sum(2), N)
    log2mlog = (((gpack * (G // N) + grank) * gsize)[:, :, None] + np.arange(gsize)).reshape(L, E)
    mlog2log = _inverse(log2mlog)
    # 2. replicate inside each node: rows are (layer, node)
    w_mlog = np.take_along_axis(weight, mlog2log, 1).reshape(L * N, per_node)
    phy2mlog, mlogcnt = replicate_experts(w_mlog, P // N)
    # 3. pack each node's replicas onto its GPUs
    w_phy = np.take_along_axis(w_mlog / mlogcnt, phy2mlog, 1)
    pack, rank = balanced_packing(w_phy, gpus_per_node)
    pphy2phy = _inverse(pack * (P // num_gpus) + rank)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, 1).reshape(L, N, P // N)
    pphy2mlog = (pphy2mlog + (np.arange(N) * per_node)[None, :, None]).reshape(L, P)
    return np.take_along_axis(mlog2log, pphy2mlog, 1)


def eplb_placement(loads, cluster: Cluster, expert_bytes: int, *, groups: int | None = None,
                   num_replicas: int | None = None, **predict_options) -> Placement:
    """EPLB as a Placement at the same memory as ours: every GPU gets the same slots in every layer, limited by
    the smallest device (memory_bytes // expert_bytes // layers). Raises BalanceError when those equal slots
    cannot hold every expert."""
    loads = validate_loads(loads)
    expert_bytes = check_expert_bytes(expert_bytes)
    L, E = loads.shape
    D = cluster.num_devices
    per_gpu = int(min(cluster.budget(expert_bytes).min() // L, E))
    if per_gpu * D < E:
        raise BalanceError(
            f"EPLB cannot place {E} experts: equal slots per GPU and layer are limited by the smallest "
            f"device ({per_gpu} slots per layer) x {D} devices = {per_gpu * D} < {E} experts"
        )
    num_replicas = per_gpu * D if num_replicas is None else num_replicas
    node = cluster.node
    counts = np.bincount(node)
    num_nodes = cluster.num_nodes if (counts == counts[0]).all() else 1
    gpu2dev = np.argsort(node, kind="stable")  # EPLB numbers GPUs node-major
    phy2log, _, logcnt = rebalance_experts(loads, num_replicas, groups or 1, num_nodes, D)
    dev = gpu2dev[np.arange(num_replicas) // (num_replicas // D)]
    layers = [LayerPlacement(dev.copy(), phy2log[i], 1.0 / logcnt[i, phy2log[i]]) for i in range(L)]
    pl = Placement(layers, E, expert_bytes, layout="uniform")
    pl.predicted = predict(pl, loads, cluster, **predict_options)
    return pl


def even_placement(loads, cluster: Cluster, expert_bytes: int, **predict_options) -> Placement:
    """Naive baseline when EPLB cannot run: one replica per expert, round-robin over devices with memory left
    (the same devices in every layer while each device's slots per layer allow it)."""
    loads = validate_loads(loads)
    L, E = loads.shape
    budget = cluster.budget(check_expert_bytes(expert_bytes))
    check_fits(L, E, budget, expert_bytes, "pooled")
    uniform = int(np.minimum(budget // L, E).sum()) >= E
    free = np.minimum(budget // L, E) if uniform else budget.copy()
    layers = []
    for _ in range(1 if uniform else L):
        dev, d = np.zeros(E, np.int64), 0
        for e in range(E):
            while free[d % len(free)] == 0:
                d += 1
            dev[e] = d % len(free)
            free[dev[e]] -= 1
            d += 1
        layers.append(LayerPlacement(dev, np.arange(E), np.ones(E)))
    layers = [LayerPlacement(layers[0].device.copy(), np.arange(E), np.ones(E)) for _ in range(L)] if uniform \
        else layers
    pl = Placement(layers, E, expert_bytes, layout="uniform" if uniform else "pooled")
    pl.predicted = predict(pl, loads, cluster, **predict_options)
    return pl
