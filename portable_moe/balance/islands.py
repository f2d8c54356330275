"""Plans that keep tokens inside vendor islands: each island hosts the experts its own tokens need most (as
far as its memory allows), serves its own tokens of those, and sends across the bridge only the tokens of
experts it does not host, plus what evens out compute between islands when that pays for the bridge.

Shapes: L layers, E experts, D devices, I islands. home [I, E] bool: island i hosts expert e (one layer);
serve [I, E]: fraction of expert e's tokens served in island i (columns sum to 1).
"""

from __future__ import annotations

import numpy as np

from .cluster import Cluster
from .solver import from_scratch, improve, solve_shares

EXPORT_STEPS = 32  # line-search points for the tokens an overloaded island hands to a faster one


def hosted_sets(w: np.ndarray, slots: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """w [E] loads, slots [I] replicas each island may hold, origin [I] share of tokens from each island ->
    home [I, E]: every expert hosted somewhere, as few tokens as possible hosted away from their island.
    One island keeps its hottest experts; the cold tail it cannot hold goes to the others, each giving up its
    least hot kept expert per tail expert taken, cheapest (origin x load given up) first; the keeping island
    is whichever leaves the fewest tokens away from home."""
    E, n_isl = len(w), len(slots)
    rank = np.argsort(-w, kind="stable")
    n = np.minimum(np.maximum(slots, 0), E)
    best, best_lost = None, np.inf
    for j in range(n_isl):
        tail = E - n[j]
        isl = np.concatenate([np.full(n[i], i) for i in range(n_isl) if i != j] + [np.zeros(0, np.int64)])
        cost = np.concatenate([origin[i] * w[rank[: n[i]][::-1]] for i in range(n_isl) if i != j] + [np.zeros(0)])
        if tail > len(cost):
            continue
        cold = np.bincount(isl[np.argsort(cost, kind="stable")[:tail]].astype(np.int64), minlength=n_isl)
        keep = n - cold
        home = np.zeros((n_isl, E), bool)
        start = int(n[j])
        for i in range(n_isl):
            home[i, rank[: keep[i]]] = True
            home[i, rank[start : start + cold[i]]] = True
            start += cold[i]
        lost = float((origin[:, None] * ~home * w).sum())
        if lost < best_lost:
            best, best_lost = home, lost
    return best


def serve_fractions(w: np.ndarray, home: np.ndarray, origin: np.ndarray, power: np.ndarray, bridge: np.ndarray
                    ) -> np.ndarray:
    """-> serve [I, E]: tokens stay in their island when it hosts the expert, else go to the hosting islands
    by compute power; then an island slower than another hands it part of the tokens of experts both host,
    as much as the estimated layer time (compute + bridge: bridge [I] seconds per token through each island's
    bridge links) improves."""
    here = home * origin[:, None]  # [I, E] tokens kept at home
    away = (~home * origin[:, None]).sum(0)  # [E] tokens whose island does not host the expert
    hp = home * power[:, None]
    serve = here + away * hp / np.maximum(hp.sum(0), 1e-300)
    for _ in range(2 * len(origin)):
        serve, gained = _export_once(w, serve, home, origin, power, bridge)
        if not gained:
            break
    return serve


def _estimate(w, serve, origin, power, bridge) -> float:
    """Max over islands of compute + bridge seconds, each island serving its own tokens first."""
    kept = np.minimum(serve, origin[:, None]) @ w
    out, inn = origin * w.sum() - kept, serve @ w - kept
    return float((serve @ w / power + np.maximum(out, inn) * bridge).max())


def _export_once(w, serve, home, origin, power, bridge):
    load = serve @ w / power
    src, dst = int(load.argmax()), int(load.argmin())
    both = home[src] & home[dst]
    movable = np.where(both, np.minimum(serve[src], origin[src]), 0.0)  # src's own tokens of shared experts
    if src == dst or not (movable * w).any():
        return serve, False
    base = _estimate(w, serve, origin, power, bridge)
    best, best_t = serve, base
    for a in np.linspace(0, 1, EXPORT_STEPS + 1)[1:]:
        s = serve.copy()
        s[src] -= a * movable
        s[dst] += a * movable
        t = _estimate(w, s, origin, power, bridge)
        if t < best_t * (1 - 1e-6):
            best, best_t = s, t
    return best, best is not serve


def top_down_plan(loads: np.ndarray, cluster: Cluster, caps: np.ndarray, groups: int | None, token_bytes: int,
                steps: np.ndarray, levels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """-> (host [L, E, D], share [L, E, D]) planned top-down: vendor islands (bridge bandwidth), then the nodes
    of each island (other-node bandwidth), then the compute-only planner on each node's devices; at each level
    every group hosts the experts its own tokens need most and serves what serve_fractions gives it, within the
    same caps [L, D]. levels=1 stops at islands (the compute-only planner over each island's devices)."""
    sums = loads.sum(1)
    scale = np.where(sums > 0, steps.sum(1) / np.where(sums > 0, sums, 1), 0.0)  # token copies per load unit
    devs = np.arange(cluster.num_devices)
    return _plan_level(loads, cluster, devs, caps, groups, token_bytes, scale, np.ones(loads.shape, bool), 0, levels)


def _plan_level(loads, cluster, devs, caps, groups, token_bytes, scale, mask, level, levels):
    """Plan loads [L, E] (experts in mask [L, E]) on devices `devs` -> host, share [L, E, len(devs)]."""

    keys = (cluster.island, cluster.node)[:levels]
    if level == len(keys):
        return from_scratch(loads, cluster.throughput[devs], caps[:, devs], _renumber(cluster.node[devs]), groups,
                            mask)
    key = keys[level][devs]
    ids = np.unique(key)
    if len(ids) == 1:
        return _plan_level(loads, cluster, devs, caps, groups, token_bytes, scale, mask, level + 1, levels)
    local = [np.nonzero(key == g)[0] for g in ids]  # positions in devs of each group
    size = np.array([len(m) for m in local])
    origin, power = size / size.sum(), np.array([cluster.throughput[devs[m]].sum() for m in local])
    bandwidth = (cluster.links.other_vendor, cluster.links.other_node)[level] * 1e9
    bridge = token_bytes / (bandwidth * size)
    L, E = loads.shape
    serve, home = np.zeros((L, len(ids), E)), np.zeros((L, len(ids), E), bool)
    for li in range(L):
        idx = np.nonzero(mask[li])[0]
        if len(idx) == 0:
            continue
        w = loads[li, idx]
        slots = np.array([caps[li, devs[m]].sum() for m in local])
        kept = hosted_sets(w, slots - _extra_replicas(w, size), origin)  # room left to split hot experts
        home[li][:, idx] = hosted_sets(w, slots, origin) if kept is None else kept
        serve[li][:, idx] = serve_fractions(w * scale[li], home[li][:, idx], origin, power, bridge)
    host, share = np.zeros((L, E, len(devs)), bool), np.zeros((L, E, len(devs)))
    for g, m in enumerate(local):
        h, s = _plan_level(loads * serve[:, g, :], cluster, devs[m], caps, groups, token_bytes, scale,
                           home[:, g, :], level + 1, levels)
        host[:, :, m], share[:, :, m] = h, s * serve[:, g, :, None]
    return host, share


def _extra_replicas(w: np.ndarray, size: np.ndarray) -> np.ndarray:
    """[G] replicas beyond one per expert that each group needs to spread its hot experts over its devices:
    an expert with more than 1/n of the load wants ceil(share x n) copies on a group of n devices."""
    share = w / max(w.sum(), 1e-300)
    return np.array([int((np.minimum(np.ceil(share * n), n) - 1).clip(0).sum()) for n in size])


def _renumber(node: np.ndarray) -> np.ndarray:
    return np.unique(node, return_inverse=True)[1].astype(np.int64)


def replan_within_islands(loads: np.ndarray, prev: np.ndarray, share: np.ndarray, cluster: Cluster, moves: dict
                          ) -> tuple[np.ndarray, np.ndarray]:
    """New loads [L, E] on the previous hosting prev [L, E, D]: each island keeps its part of every expert
    (from share [L, E, D]), re-solves its shares and moves replicas among its own devices (solver.improve,
    `moves` its keyword arguments, the move budget shared by the islands in turn)."""

    host, out = prev.copy(), np.zeros_like(share)
    isl, thr = cluster.island, cluster.throughput
    left = moves["max_moves"]
    for i in range(int(isl.max()) + 1):
        m = np.nonzero(isl == i)[0]
        part = share[:, :, m].sum(2)  # [L, E]
        sub = loads * part
        h = prev[:, :, m].copy()
        s = solve_shares(sub, h, thr[m])
        opts = dict(moves, caps=moves["caps"][:, m], budget=None if moves["budget"] is None else moves["budget"][m],
                    max_moves=left)
        h, s = improve(sub, h, s, thr[m], prev=prev[:, :, m], **opts)
        left -= int((h & ~prev[:, :, m]).sum())
        host[:, :, m], out[:, :, m] = h, s * part[:, :, None]
    return host, out
