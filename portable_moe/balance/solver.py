"""The compute-only solver, for one set of devices: replica counts (water-filling on load per replica) ->
heterogeneous LPT onto devices with free slots -> multiplicative share solve (min-max-time shares of the
hosting graph) -> greedy replica moves on the bottleneck device of the worst layer. planner.py runs it on
the whole cluster and, through islands.py, per island; memory.py sizes caps with its replica counts.

Shapes as in planner.py: L layers, E experts, D devices; host [L, E, D], share [L, E, D], caps [L, D]."""

from __future__ import annotations

import numpy as np

from .cluster import BalanceError

LOCALITY_PENALTY = 0.05  # relative time a replica may give up to stay on its group's home node
UNLIMITED = 1 << 60


def device_time(share: np.ndarray, loads: np.ndarray, throughput: np.ndarray) -> np.ndarray:
    """share [L, E, D], loads [L, E], throughput [D] -> time [L, D]."""
    return np.einsum("led,le->ld", share, loads) / throughput


def replica_counts(loads: np.ndarray, total: np.ndarray, cap: int, mask: np.ndarray | None = None) -> np.ndarray:
    """loads [L, E], total [L] replicas per layer, cap max replicas per expert -> counts [L, E] (>= 1 where
    mask, 0 elsewhere). Minimises max load / count: counts = clip(ceil(load / lam), 1, cap) with lam found by
    bisection, the rest of the slots going one each to the experts with the highest load per replica."""
    m = np.ones(loads.shape, np.int64) if mask is None else mask.astype(np.int64)
    lo, hi = np.zeros(len(loads)), loads.max(1) + 1e-12
    for _ in range(50):
        lam = (lo + hi) / 2
        cnt = np.clip(np.ceil(loads / np.maximum(lam[:, None], 1e-300)), m, cap * m)
        over = cnt.sum(1) > total
        lo, hi = np.where(over, lam, lo), np.where(over, hi, lam)
    cnt = np.clip(np.ceil(loads / hi[:, None]), m, cap * m).astype(np.int64)
    rest = total - cnt.sum(1)
    per = np.where((cnt < cap) & (m > 0), loads / np.maximum(cnt, 1), -1.0)
    rank = np.argsort(np.argsort(-per, axis=1, kind="stable"), axis=1)
    cnt += (rank < rest[:, None]) & (per >= 0)
    return cnt


def group_home_nodes(loads: np.ndarray, groups: int, node: np.ndarray, thr: np.ndarray, caps: np.ndarray
                     ) -> np.ndarray:
    """loads [L, E] -> home node [L, E]: groups packed heaviest-first onto the node with the least time,
    as long as the node has slots left for the group's experts."""
    L, E = loads.shape
    N = int(node.max()) + 1
    node_thr = np.bincount(node, thr, N)
    node_slots = caps @ np.eye(N)[node]  # [L, N]
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


def assign_replicas(loads: np.ndarray, counts: np.ndarray, thr: np.ndarray, caps: np.ndarray, node: np.ndarray,
                    home: np.ndarray | None, fit: bool = False) -> np.ndarray:
    """Heterogeneous LPT: replicas (load/count each) heaviest first onto the device with a free slot that
    finishes earliest (penalised off the expert's home node). loads, counts [L, E] -> host [L, E, D] bool."""
    L, E = loads.shape
    D = len(thr)
    piece = loads / np.maximum(counts, 1)
    R = counts.sum(1)
    exp, size = np.zeros((L, int(R.max())), np.int64), np.full((L, int(R.max())), -1.0)  # replicas, heaviest first
    for i in range(L):
        e = np.repeat(np.arange(E), counts[i])
        order = np.argsort(-piece[i, e], kind="stable")
        exp[i, : R[i]], size[i, : R[i]] = e[order], piece[i, e[order]]
    rows = np.arange(L)
    host, tok, used = np.zeros((L, E, D), bool), np.zeros((L, D)), np.zeros((L, D), np.int64)
    cap = (loads.sum(1) / thr.sum())[:, None] * thr  # [L, D] fluid token capacity
    for k in range(exp.shape[1]):
        e, p, ok = exp[:, k], size[:, k], size[:, k] >= 0
        score = (tok + np.maximum(p, 0)[:, None]) / thr
        if fit:  # best fit: piece closest to the device's remaining capacity per free slot, if it fits
            avg = np.maximum(cap - tok, 1e-12) / np.maximum(caps - used, 1)
            close = np.abs(np.log(np.maximum(p, 1e-12)[:, None] / avg))
            score = np.where(tok + p[:, None] <= cap * (1 + 1e-9), close, 1e6 + score)
        if home is not None:
            score = score * (1 + LOCALITY_PENALTY * (node[None, :] != home[rows, e][:, None]))
        score[(used >= caps) | host[rows, e]] = np.inf
        d = score.argmin(1)
        ok &= np.isfinite(score[rows, d])
        host[rows[ok], e[ok], d[ok]] = True
        tok[rows[ok], d[ok]] += p[ok]
        used[rows[ok], d[ok]] += 1
    return _cover(host, counts > 0, caps)


def _cover(host: np.ndarray, need: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Give every needed expert without a replica one, in a free slot or in place of an extra replica of
    another expert (the LPT order can leave the last free slots on devices that already host the expert)."""
    for i, e in np.argwhere(need & ~host.any(2)):
        used, count = host[i].sum(0), host[i].sum(1)
        free = np.nonzero(used < caps[i])[0]
        if len(free):
            host[i, e, free[0]] = True
            continue
        spare = host[i] & (count > 1)[:, None]  # [E, D] replicas whose expert has another
        if not spare.any():
            raise BalanceError(f"layer {i}: {int(caps[i].sum())} slots cannot hold its {int(need[i].sum())} experts")
        e2, d = np.argwhere(spare)[0]
        host[i, e2, d], host[i, e, d] = False, True
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
        if i % 5 == 0:
            worst = float(t.max())
            if prev - worst < 2e-5 * worst:
                break
            prev = worst
        x = x * np.clip(1.0 / np.maximum(t, 1e-12), 0.05, 20.0)[ld] ** alpha
        x = np.maximum(x, 1e-12)
    out = np.zeros((L, E, D))
    out[li, ei, di] = x / np.bincount(le, x, L * E)[le]
    return out


def _try_move(w: np.ndarray, host: np.ndarray, x: np.ndarray, thr: np.ndarray, room: np.ndarray):
    """One layer (w [E], host/x [E, D]): add a replica of the bottleneck device's biggest expert on the least
    loaded device (evicting that device's smallest multi-replica expert unless room [D] says it has a free
    slot). -> (new host, new share, max time) or None."""
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
            if not room[d]:
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


def improve(loads: np.ndarray, host: np.ndarray, share: np.ndarray, thr: np.ndarray, *, caps: np.ndarray,
            budget: np.ndarray | None, prev: np.ndarray | None, max_moves: int, min_gain: float, max_tries: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy replica moves on the worst layer while each move cuts its max time by >= min_gain (relative)
    and fewer than `max_moves` replicas are new relative to `prev` [L, E, D] (None: moves are free). A device
    gains a replica without evicting one while it is under caps [L, D] in that layer, or, with `budget` [D]
    (pooled memory), while all its replicas together stay within the budget."""
    t = device_time(share, loads, thr)
    fluid = np.maximum(loads.sum(1) / thr.sum(), 1e-300)
    ratio = np.where(loads.sum(1) > 0, t.max(1) / fluid, 1.0)
    active = ratio > 1 + 1e-3
    total = host.sum((0, 1))  # [D] replicas over all layers
    moves = 0
    for _ in range(max_tries):
        if not active.any() or moves >= max_moves:
            break
        i = int(np.argmax(np.where(active, ratio, -1)))
        room = (total < budget) if budget is not None else (host[i].sum(0) < caps[i])
        res = _try_move(loads[i], host[i], share[i], thr, room & (host[i].sum(0) < host.shape[1]))
        old = t[i].max()
        if res is None or res[2] > old * (1 - min_gain):
            active[i] = False
            continue
        cost = 0 if prev is None else int((res[0] & ~prev[i]).sum() - (host[i] & ~prev[i]).sum())
        if moves + cost > max_moves:
            active[i] = False
            continue
        moves += cost
        total += res[0].sum(0) - host[i].sum(0)
        host[i], share[i] = res[0], res[1]
        t[i] = (share[i] * loads[i][:, None]).sum(0) / thr
        ratio[i] = t[i].max() / fluid[i]
        active[i] = ratio[i] > 1 + 1e-3
    return host, share


def from_scratch(loads, thr, caps, node, groups, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """loads [L, E], caps [L, D] -> (host, share) of the better of earliest-finish and best-fit LPT per layer."""
    L, E = loads.shape
    D = len(thr)
    need = np.ones((L, E), bool) if mask is None else mask
    counts = replica_counts(loads, np.minimum(caps.sum(1), need.sum(1) * D), D, need)
    home = group_home_nodes(loads, groups, node, thr, caps) if groups and node.max() > 0 else None
    best = None
    fluid = loads.sum(1) / thr.sum()
    for fit in (False, True):  # earliest finish (LPT) and best fit per slot; keep the better per layer
        host = assign_replicas(loads, counts, thr, caps, node, home, fit)
        share = solve_shares(loads, host, thr)
        mx = device_time(share, loads, thr).max(1)
        if best is None:
            best = (host, share, mx)
            if (mx <= fluid * 1.001).all():  # at the bound already
                break
            continue
        better = mx < best[2]
        best[0][better], best[1][better] = host[better], share[better]
    return best[0], best[1]
