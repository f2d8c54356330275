"""Heterogeneity-aware expert placement: equalise time (tokens / throughput), per-device slots from memory,
incremental re-planning under a bytes-moved budget.

Shapes: L layers, E experts, D devices, N nodes, G expert groups. host [L, E, D] bool says which device holds
a replica of which expert; share [L, E, D] float is the fraction of an expert's tokens each replica takes.
Pipeline: replica counts (water-filling on load per replica) -> heterogeneous LPT onto devices with free slots
-> multiplicative share solve (converges to the min-max-time shares of the hosting graph) -> greedy replica
moves on the bottleneck device of the worst layer -> split of every replica's tokens by source node (by_node).
"""

from __future__ import annotations

import numpy as np

from .cluster import BalanceError, Cluster, check_expert_bytes
from .placement import Placement, placement_from_dense, predict, validate_loads, validate_placement

LOCALITY_PENALTY = 0.05  # relative time a replica may give up to stay on its group's home node


def replica_counts(loads: np.ndarray, total: np.ndarray, cap: int) -> np.ndarray:
    """loads [L, E], total [L] replicas per layer, cap max replicas per expert -> counts [L, E] (>= 1).

    Minimises max load / count: counts = clip(ceil(load / lam), 1, cap) with lam found by bisection, the rest
    of the slots going one each to the experts with the highest load per replica."""
    L, E = loads.shape
    lo, hi = np.zeros(L), loads.max(1) + 1e-12
    for _ in range(50):
        lam = (lo + hi) / 2
        cnt = np.clip(np.ceil(loads / np.maximum(lam[:, None], 1e-300)), 1, cap)
        over = cnt.sum(1) > total
        lo, hi = np.where(over, lam, lo), np.where(over, hi, lam)
    cnt = np.clip(np.ceil(loads / hi[:, None]), 1, cap).astype(np.int64)
    rest = total - cnt.sum(1)
    per = np.where(cnt < cap, loads / cnt, -1.0)
    rank = np.argsort(np.argsort(-per, axis=1, kind="stable"), axis=1)
    cnt += (rank < rest[:, None]) & (per >= 0)
    return cnt


def group_home_nodes(
    loads: np.ndarray, groups: int, node: np.ndarray, thr: np.ndarray, slots: np.ndarray
) -> np.ndarray:
    """loads [L, E] -> home node [L, E]: groups packed heaviest-first onto the node with the least time,
    as long as the node has slots left for the group's experts."""
    L, E = loads.shape
    N = int(node.max()) + 1
    node_thr, node_slots = np.bincount(node, thr, N), np.bincount(node, slots, N)
    gsize = E // groups
    gload = loads.reshape(L, groups, gsize).sum(2)
    home = np.zeros((L, groups), np.int64)
    rows = np.arange(L)
    tok, used = np.zeros((L, N)), np.zeros((L, N))
    for g in np.argsort(-gload, axis=1, kind="stable").T:  # g [L]: k-th heaviest group of each layer
        score = (tok + gload[rows, g][:, None]) / node_thr
        score = np.where(used + gsize <= node_slots, score, np.inf)
        score = np.where(np.isinf(score).all(1, keepdims=True), tok / node_thr, score)
        n = score.argmin(1)
        home[rows, g] = n
        tok[rows, n] += gload[rows, g]
        used[rows, n] += gsize
    return np.repeat(home, gsize, axis=1)


def assign_replicas(
    loads: np.ndarray,
    counts: np.ndarray,
    thr: np.ndarray,
    slots: np.ndarray,
    node: np.ndarray,
    home: np.ndarray | None,
    fit: bool = False,
) -> np.ndarray:
    """Heterogeneous LPT: replicas (load/count each) heaviest first onto the free-slot device that finishes
    earliest (penalised off the expert's home node). loads, counts [L, E] -> host [L, E, D] bool."""
    L, E = loads.shape
    D = len(thr)
    piece = loads / counts
    reps = np.repeat(np.arange(E), counts.max(0))  # padded replica list, same for every layer
    valid = np.concatenate([np.arange(k) for k in counts.max(0)])[None, :] < counts[:, reps]
    size = np.where(valid, piece[:, reps], -1.0)
    order = np.argsort(-size, axis=1, kind="stable")
    rows = np.arange(L)
    host, tok, used = np.zeros((L, E, D), bool), np.zeros((L, D)), np.zeros((L, D), np.int64)
    cap = (loads.sum(1) / thr.sum())[:, None] * thr  # [L, D] fluid token capacity
    for k in range(order.shape[1]):
        col = order[:, k]
        e, p, ok = reps[col], size[rows, col], valid[rows, col]
        score = (tok + np.maximum(p, 0)[:, None]) / thr
        if fit:  # best fit: piece closest to the device's remaining capacity per free slot, if it fits
            avg = np.maximum(cap - tok, 1e-12) / np.maximum(slots - used, 1)
            close = np.abs(np.log(np.maximum(p, 1e-12)[:, None] / avg))
            score = np.where(tok + p[:, None] <= cap * (1 + 1e-9), close, 1e6 + score)
        if home is not None:
            score = score * (1 + LOCALITY_PENALTY * (node[None, :] != home[rows, e][:, None]))
        score[(used >= slots) | host[rows, e]] = np.inf
        d = score.argmin(1)
        ok &= np.isfinite(score[rows, d])
        host[rows[ok], e[ok], d[ok]] = True
        tok[rows[ok], d[ok]] += p[ok]
        used[rows[ok], d[ok]] += 1
    return host


def solve_shares(
    loads: np.ndarray,
    host: np.ndarray,
    thr: np.ndarray,
    share: np.ndarray | None = None,
    iters: int = 200,
    alpha: float = 0.7,
) -> np.ndarray:
    """Shares minimising the max device time for a fixed hosting graph: every share is scaled by
    (fluid / device time)^alpha and renormalised per expert until all hosts of an expert run equally long.
    loads [L, E], host [L, E, D] -> share [L, E, D] (rows of hosted experts sum to 1).
    Works on the flat replica list (R = number of True in host), so one iteration is O(R)."""
    L, E, D = host.shape
    li, ei, di = np.nonzero(host)
    le, ld = li * E + ei, li * D + di  # [R] flat (layer, expert) and (layer, device) ids
    w = loads[li, ei]
    x = np.ones(len(li)) if share is None else np.maximum(share[li, ei, di], 1e-12)
    fluid = np.maximum(loads.sum(1) / thr.sum(), 1e-300)
    inv = 1.0 / np.tile(thr, L)
    prev = np.inf
    for i in range(iters):
        x = x / np.bincount(le, x, L * E)[le]
        t = np.bincount(ld, x * w, L * D) * inv / np.repeat(fluid, D)  # [L*D] time / fluid
        if i % 10 == 0:
            worst = float(t.max())
            if prev - worst < 1e-5 * worst:
                break
            prev = worst
        x = x * np.clip(1.0 / np.maximum(t, 1e-12), 0.05, 20.0)[ld] ** alpha
        x = np.maximum(x, 1e-12)
    out = np.zeros((L, E, D))
    out[li, ei, di] = x / np.bincount(le, x, L * E)[le]
    return out


def node_split(share: np.ndarray, node: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Route each node's tokens to replicas on the same node first, the rest proportionally.
    share [L, E, D], node [D], frac [N] -> by_node [L, E, D, N]: fraction of node n's tokens of expert e that
    replica on d takes. Sum over d is 1 for every (e, n); by_node @ frac == share."""
    N = len(frac)
    onehot = np.eye(N)[node]  # [D, N]
    demand = share @ onehot  # [L, E, N] share hosted on node n
    local = np.minimum(frac, demand)  # served locally
    used = np.where(
        demand > 0, local / np.maximum(demand, 1e-300), 0.0
    )  # fraction of node's hosted share used
    loc = share * used[..., node]  # [L, E, D] share served to own node
    spare = share - loc  # [L, E, D]
    supply = frac - local  # [L, E, N]
    total = np.maximum(supply.sum(-1, keepdims=True), 1e-300)  # [L, E, 1]
    a = spare[..., None] * (supply / total)[:, :, None, :]  # [L, E, D, N] tokens n -> d, in share units
    a += loc[..., None] * onehot
    return a / frac


def layer_times(loads: np.ndarray, share: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """loads [L, E], share [L, E, D] -> time [L, D]."""
    return np.einsum("led,le->ld", share, loads) / thr


def _try_move(w: np.ndarray, host: np.ndarray, x: np.ndarray, thr: np.ndarray, slots: np.ndarray):
    """One layer (w [E], host/x [E, D]): add a replica of the bottleneck device's biggest expert on the least
    loaded device (evicting that device's smallest multi-replica expert if it is full).
    -> (new host, new share, max time) or None."""
    t = (x * w[:, None]).sum(0) / thr
    dmax = int(t.argmax())
    tok = x[:, dmax] * w
    counts = host.sum(1)
    for e in np.argsort(-tok)[:2]:
        if tok[e] <= 0:
            break
        for d in np.argsort(t):
            if host[e, d] or t[d] >= t[dmax]:
                continue
            h = host.copy()
            if h[:, d].sum() >= slots[d]:
                on = np.nonzero(h[:, d] & (counts > 1) & (np.arange(len(w)) != e))[0]
                if len(on) == 0:
                    continue
                h[on[np.argmin(x[on, d] * w[on])], d] = False
            h[e, d] = True
            x0 = x.copy()
            x0[e, d] = x0[e, dmax] / 2
            x0[e, dmax] /= 2
            s = solve_shares(w[None], h[None], thr, x0[None], iters=60)[0]
            return h, s, float(((s * w[:, None]).sum(0) / thr).max())
    return None


def improve(
    loads: np.ndarray,
    host: np.ndarray,
    share: np.ndarray,
    thr: np.ndarray,
    slots: np.ndarray,
    prev: np.ndarray | None,
    budget: int,
    min_gain: float,
    max_tries: int,
) -> tuple[np.ndarray, ...]:
    """Greedy replica moves on the worst layer while each move cuts its max time by >= min_gain (relative)
    and fewer than `budget` replicas are new relative to `prev` [L, E, D] (None: moves are free)."""
    t = layer_times(loads, share, thr)
    fluid = np.maximum(loads.sum(1) / thr.sum(), 1e-300)
    ratio = np.where(loads.sum(1) > 0, t.max(1) / fluid, 1.0)
    active = ratio > 1 + 1e-3
    moves = 0
    for _ in range(max_tries):
        if not active.any() or moves >= budget:
            break
        i = int(np.argmax(np.where(active, ratio, -1)))
        res = _try_move(loads[i], host[i], share[i], thr, slots)
        old = t[i].max()
        if res is None or res[2] > old * (1 - min_gain):
            active[i] = False
            continue
        cost = 0 if prev is None else int((res[0] & ~prev[i]).sum() - (host[i] & ~prev[i]).sum())
        if moves + cost > budget:
            active[i] = False
            continue
        moves += cost
        host[i], share[i] = res[0], res[1]
        t[i] = (share[i] * loads[i][:, None]).sum(0) / thr
        ratio[i] = t[i].max() / fluid[i]
        active[i] = ratio[i] > 1 + 1e-3
    return host, share


def check_capacity(E: int, slots: np.ndarray) -> None:
    if slots.sum() < E:
        raise BalanceError(
            f"cluster memory cannot hold every expert: {int(slots.sum())} total slots "
            f"(memory_bytes // expert_bytes summed over devices) < {E} experts"
        )


def check_groups(E: int, groups: int | None) -> None:
    if groups is not None and (
        isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups <= 0 or E % groups
    ):
        raise BalanceError(f"groups={groups!r} must be a positive integer dividing the {E} experts")


def plan(
    loads,
    cluster: Cluster,
    expert_bytes: int,
    groups: int | None = None,
    previous: Placement | None = None,
    max_move_bytes: int | None = None,
    by_node: bool = True,
) -> Placement:
    """Place experts for loads [L, E] on `cluster`. With `previous`, re-plan incrementally: shares are
    re-solved for free and replicas move only within `max_move_bytes` (default: only when a move cuts a
    layer's max time by >= 1%). Returns a Placement with moved_bytes and predicted filled in."""
    loads = validate_loads(loads)
    expert_bytes = check_expert_bytes(expert_bytes)
    L, E = loads.shape
    check_groups(E, groups)
    thr, node, slots = cluster.throughput, cluster.node, cluster.slots(expert_bytes)
    check_capacity(E, slots)
    if max_move_bytes is not None and (
        not isinstance(max_move_bytes, (int, np.integer)) or max_move_bytes < 0
    ):
        raise BalanceError(f"max_move_bytes must be a non-negative integer, got {max_move_bytes!r}")
    if previous is None:
        host, share = _from_scratch(loads, thr, slots, node, groups, cluster.num_devices)
        host, share = improve(loads, host, share, thr, slots, None, 1 << 60, 1e-3, 4 * L)
        moved = 0
    else:
        prev = _previous_host(previous, cluster, loads.shape, expert_bytes)
        host = prev.copy()
        share = solve_shares(loads, host, thr, previous.dense(cluster.num_devices)[1])
        budget = (1 << 60) if max_move_bytes is None else int(max_move_bytes) // expert_bytes
        min_gain = 0.01 if max_move_bytes is None else 1e-3
        host, share = improve(loads, host, share, thr, slots, prev, budget, min_gain, 3 * L + budget)
        moved = int((host & ~prev).sum()) * expert_bytes
    bn = node_split(share, node, cluster.node_fraction()) if by_node else None
    pl = placement_from_dense(host, share, bn, expert_bytes)
    pl.moved_bytes = moved
    pl.predicted = predict(pl, loads, cluster)
    return pl


def _from_scratch(loads, thr, slots, node, groups, D) -> tuple[np.ndarray, np.ndarray]:
    L, E = loads.shape
    total = np.full(L, min(int(slots.sum()), E * D))
    counts = replica_counts(loads, total, D)
    home = group_home_nodes(loads, groups, node, thr, slots) if groups and node.max() > 0 else None
    best = None
    for fit in (False, True):  # earliest finish (LPT) and best fit per slot; keep the better per layer
        host = assign_replicas(loads, counts, thr, slots, node, home, fit)
        missing = ~host.any(2)
        if missing.any():  # slots ran out on the devices a cold expert could use: should not happen, be loud
            i, e = np.argwhere(missing)[0]
            raise BalanceError(f"could not place expert {e} of layer {i}: no device has a free slot")
        share = solve_shares(loads, host, thr)
        mx = layer_times(loads, share, thr).max(1)
        if best is None:
            best = (host, share, mx)
            continue
        better = mx < best[2]
        best[0][better], best[1][better] = host[better], share[better]
    return best[0], best[1]


def _previous_host(
    previous: Placement, cluster: Cluster, shape: tuple[int, int], expert_bytes: int
) -> np.ndarray:
    if (previous.num_layers, previous.num_experts) != shape:
        raise BalanceError(
            f"previous placement is {previous.num_layers} layers x {previous.num_experts} experts "
            f"but the load is {shape[0]} x {shape[1]}"
        )
    if previous.expert_bytes != expert_bytes:
        raise BalanceError(f"previous placement has expert_bytes {previous.expert_bytes}, not {expert_bytes}")
    validate_placement(previous, cluster)
    return previous.dense(cluster.num_devices)[0] > 0
