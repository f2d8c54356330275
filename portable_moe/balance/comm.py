"""Communication model: where each source node's tokens go (by_node), the traffic that causes per link class,
the predicted layer time with it, and the fluid lower bound over token flows (a linear program).

Shapes: L layers, E experts, D devices, N nodes, C = 3 link classes (cluster.LINK_CLASSES).
Tokens originate evenly on every device. A token copy sent from device s to device d moves `token_bytes`
(dispatch there + combine back). Per device and class the link time is max(bytes out, bytes in) / bandwidth
(full duplex, dispatch and combine swap directions); classes run in parallel, so a device's communication
time is the max over classes. Layer time: max over devices of compute + communication (no overlap) or of
max(compute, communication) (overlap).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .cluster import LINK_CLASSES, BalanceError, Cluster

DEFAULT_TOKEN_BYTES = 7168 * 3  # DeepSeek-V3 hidden 7168: FP8 dispatch (1 byte) + BF16 combine (2 bytes)


def step_loads(loads: np.ndarray, tokens_per_step: int | None) -> np.ndarray:
    """Loads as token copies per step: each layer rescaled to `tokens_per_step` copies (None: as given)."""
    if tokens_per_step is None:
        return loads
    sums = loads.sum(1, keepdims=True)
    return np.where(sums > 0, loads * tokens_per_step / np.where(sums > 0, sums, 1), 0.0)


def route(share: np.ndarray, cluster: Cluster) -> np.ndarray:
    """Each node's tokens go to replicas on the same node first, then inside its vendor island, then anywhere,
    in proportion to the spare share at each level. share [L, E, D] -> by_node [L, E, D, N]: fraction of node
    n's tokens of expert e that device d serves (sums to 1 over d; by_node @ node_fraction == share)."""
    node, frac = cluster.node, cluster.node_fraction()
    N = len(frac)
    isl = np.zeros(N, np.int64)
    isl[node] = cluster.island
    cap = share.copy()  # [L, E, D] share still free
    supply = np.broadcast_to(frac, share.shape[:2] + (N,)).copy()  # [L, E, N] tokens not yet placed
    amount = np.zeros(share.shape + (N,))
    for gnode, gdev in ((np.arange(N), node), (isl, isl[node]), (np.zeros(N, np.int64), np.zeros_like(node))):
        G = int(gnode.max()) + 1
        on_n, on_d = np.eye(G)[gnode], np.eye(G)[gdev]  # [N, G], [D, G]
        cap_g, sup_g = cap @ on_d, supply @ on_n  # [L, E, G]
        served = np.minimum(cap_g, sup_g)
        take_d = cap * ((served / np.maximum(cap_g, 1e-300)) @ on_d.T)  # [L, E, D]
        give_n = supply * ((served / np.maximum(sup_g, 1e-300)) @ on_n.T)  # [L, E, N]
        ratio = give_n / np.maximum(served @ on_n.T, 1e-300)  # [L, E, N] node's part of its group's flow
        amount += take_d[..., None] * ratio[:, :, None, :] * (gdev[:, None] == gnode[None, :])
        cap, supply = cap - take_d, supply - give_n
    return amount / frac


def traffic(loads: np.ndarray, by_node: np.ndarray, cluster: Cluster) -> np.ndarray:
    """loads [L, E] token copies per step, by_node [L, E, D, N] -> copies sent from device s to d [L, D, D]
    (zero diagonal: a device serves its own tokens without a link)."""
    D = cluster.num_devices
    per_src = np.einsum("le,ledn->lnd", loads, by_node) / D  # [L, N, D] from each device of node n
    flow = per_src[:, cluster.node, :]
    flow[:, np.arange(D), np.arange(D)] = 0.0
    return flow


def link_times(flow: np.ndarray, cluster: Cluster, token_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """flow [L, D, D] -> (seconds [L, D, C] per device and class, bytes [L, C] sent over each class)."""
    cls = cluster.link_class()
    bw = cluster.links.bandwidth()
    C = len(LINK_CLASSES)
    secs, sent = np.zeros(flow.shape[:2] + (C,)), np.zeros((flow.shape[0], C))
    for c in range(C):
        f = flow * (cls == c)
        out, inn = f.sum(2), f.sum(1)  # [L, D]
        secs[..., c] = np.maximum(out, inn) * token_bytes / bw[c]
        sent[:, c] = out.sum(1) * token_bytes
    return secs, sent


def comm_predict(loads: np.ndarray, share: np.ndarray, by_node: np.ndarray, cluster: Cluster,
                 token_bytes: int) -> dict:
    """Per layer and device: compute and communication seconds, layer time without/with overlap, bytes per class.
    loads [L, E] are token copies per step."""
    compute = np.einsum("led,le->ld", share, loads) / cluster.throughput  # [L, D]
    secs, sent = link_times(traffic(loads, by_node, cluster), cluster, token_bytes)
    comm = secs.max(2)
    return {
        "compute_s": compute,
        "comm_s": comm,
        "comm_class_s": secs,
        "layer_s": (compute + comm).max(1),
        "layer_overlap_s": np.maximum(compute, comm).max(1),
        "bytes": sent,
    }


@lru_cache(maxsize=64)
def fluid_bound(cluster: Cluster, token_bytes: int, overlap: bool) -> float:
    """Seconds per token copy (scale by a layer's copies) of the best flow of tokens between devices, ignoring
    which expert a token needs and how many replicas fit: a lower bound on any plan's layer time under this
    model. Variables: x[s, d] (share of all copies sent from s to d), comm[d], t; minimise t."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    D, C = cluster.num_devices, len(LINK_CLASSES)
    thr = cluster.throughput
    unit = 1.0 / thr.sum()  # seconds of the compute-only fluid bound per copy: the LP works in these units
    cls, sec = cluster.link_class(), token_bytes / cluster.links.bandwidth() / unit  # [D, D], [C] per copy
    nx, t = D * D, D * D + D
    s_idx, d_idx = np.divmod(np.arange(nx), D)
    rows, cols, vals, rhs = [], [], [], []

    def add(r, c, v):
        rows.append(np.asarray(r)), cols.append(np.asarray(c)), vals.append(np.asarray(v, float))

    n = 0
    for c in range(C):  # comm[d] >= seconds out of d and into d over class c
        for end in (s_idx, d_idx):
            on = cls[s_idx, d_idx] == c
            add(n + end[on], np.arange(nx)[on], np.full(on.sum(), sec[c]))
            add(n + np.arange(D), nx + np.arange(D), -np.ones(D))
            rhs.append(np.zeros(D))
            n += D
    for part in ((True, True),) if not overlap else ((True, False), (False, True)):  # t >= compute (+) comm
        if part[0]:
            add(n + d_idx, np.arange(nx), 1.0 / (thr[d_idx] * unit))
        if part[1]:
            add(n + np.arange(D), nx + np.arange(D), np.ones(D))
        add(n + np.arange(D), np.full(D, t), -np.ones(D))
        rhs.append(np.zeros(D))
        n += D
    a_ub = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, t + 1))
    a_eq = coo_matrix((np.ones(nx), (s_idx, np.arange(nx))), shape=(D, t + 1))
    cost = np.zeros(t + 1)
    cost[t] = 1.0
    res = linprog(cost, A_ub=a_ub.tocsr(), b_ub=np.concatenate(rhs), A_eq=a_eq.tocsr(), b_eq=np.full(D, 1.0 / D),
                  bounds=(0, None), method="highs")
    if res.status != 0:
        raise BalanceError(f"fluid bound: the linear program did not solve ({res.message})")
    return float(res.x[t]) * unit
