"""Memory: each device's budget counts expert copies of all layers together, split into per-layer slot caps.

Shapes: L layers, E experts, D devices. budget [D] = memory_bytes // expert_bytes (copies over all layers);
caps [L, D] = how many replicas of layer l device d may hold. Layouts:
- uniform: every layer gets the same caps, budget // L per device (what engines with fixed per-layer
  expert slots, like EPLB's, can load);
- pooled: hot layers get more slots than cold ones, each device's caps summing to at most its budget.
"""

from __future__ import annotations

import numpy as np

from .cluster import BalanceError
from .solver import replica_counts

LAYOUTS = ("pooled", "uniform")


def check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise BalanceError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def check_fits(L: int, E: int, budget: np.ndarray, expert_bytes: int, layout: str) -> None:
    """Refuse a cluster whose memory cannot hold one copy of every expert of every layer."""
    if layout == "uniform":
        have = int(np.minimum(budget // L, E).sum())
        if have < E:
            raise BalanceError(
                f"cluster memory cannot hold every expert with uniform per-layer slots: {have} slots per layer "
                f"(memory_bytes // expert_bytes // {L} layers, summed over devices) < {E} experts; "
                f"{(E - have) * L * expert_bytes} bytes missing (at least; pooled layout needs less)"
            )
        return
    have, need = int(budget.sum()), L * E
    if have < need:
        raise BalanceError(
            f"cluster memory cannot hold every expert: {have} expert copies fit (memory_bytes // expert_bytes, "
            f"summed over devices) < {L} layers x {E} experts = {need}; {(need - have) * expert_bytes} bytes missing"
        )


def layer_caps(loads: np.ndarray, budget: np.ndarray, layout: str) -> np.ndarray:
    """loads [L, E], budget [D] -> caps [L, D] int64 with caps.sum(0) <= budget and caps.sum(1) >= E."""

    L, E = loads.shape
    D = len(budget)
    if layout == "uniform":
        return np.repeat(np.minimum(budget // L, E)[None, :], L, axis=0)
    total = int(min(budget.sum(), L * E * D))
    sums = loads.sum(1, keepdims=True)
    norm = np.where(sums > 0, loads / np.where(sums > 0, sums, 1), 1.0 / E)  # every layer weighs the same
    wanted = replica_counts(norm.reshape(1, L * E), np.array([total]), D).reshape(L, E).sum(1)  # [L] >= E
    return _split(wanted, budget, E)


def _split(rows: np.ndarray, budget: np.ndarray, E: int) -> np.ndarray:
    """Integer caps [L, D]: row l sums to rows[l] (or every device capped at E), column d to <= budget[d];
    each device's budget split over layers in proportion to the layers' replica counts."""
    exact = rows[:, None] * budget[None, :] / max(int(budget.sum()), 1)  # [L, D], columns sum <= budget
    caps = np.minimum(np.floor(exact).astype(np.int64), E)
    frac = exact - np.floor(exact)
    for i in np.argsort(-rows, kind="stable"):
        for _ in range(len(budget)):
            need = int(rows[i] - caps[i].sum())
            open_ = (caps.sum(0) < budget) & (caps[i] < E)
            if need <= 0 or not open_.any():
                break
            pick = np.argsort(-np.where(open_, frac[i], -1.0), kind="stable")[: min(need, int(open_.sum()))]
            caps[i, pick] += 1
            frac[i, pick] = 0.0
    return caps


def memory_use(counts: np.ndarray, memory_bytes: np.ndarray, expert_bytes: int) -> dict:
    """counts [L, D] replicas per layer and device -> {"used_bytes": [D], "budget_bytes": [D]}."""
    return {"used_bytes": [int(c) * expert_bytes for c in counts.sum(0)],
            "budget_bytes": [int(m) for m in memory_bytes]}
