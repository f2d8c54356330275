"""Heterogeneity-aware expert placement: equalise time (tokens / throughput) within each device's memory (summed
over layers), keep tokens inside vendor islands when the bridge between them costs more than it saves, and
re-plan incrementally under a bytes-moved budget.

Shapes: L layers, E experts, D devices, N nodes, G expert groups. host [L, E, D] bool says which device holds
a replica of which expert; share [L, E, D] float is the fraction of an expert's tokens each replica takes;
caps [L, D] the replicas each device may hold per layer (memory.layer_caps); mask [L, E] the experts a
(sub-)plan must host. The compute-only solver (solver.py) places replicas on a set of devices; on a cluster of
several vendors it runs once per island on the tokens that island serves (islands.py), and each layer keeps
whichever plan the communication-inclusive time model (comm.py) predicts faster. Tokens are routed node-first,
island-second.
"""

from __future__ import annotations

import numpy as np

from .cluster import BalanceError, Cluster, check_expert_bytes
from .comm import DEFAULT_TOKEN_BYTES, comm_predict, route, step_loads
from .islands import replan_within_islands, top_down_plan
from .memory import check_fits, check_layout, layer_caps
from .placement import (
    Placement,
    placement_from_dense,
    predict,
    validate_loads,
    validate_placement,
)
from .solver import UNLIMITED, from_scratch, improve, solve_shares


def check_groups(E: int, groups: int | None) -> None:
    if groups is not None and (
        isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups <= 0 or E % groups
    ):
        raise BalanceError(f"groups={groups!r} must be a positive integer dividing the {E} experts")


def check_count(name: str, value, limit: int = UNLIMITED) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                              or not 0 <= value <= limit):
        raise BalanceError(f"{name} must be an integer from 0 to {limit}, got {value!r}")


def plan(loads, cluster: Cluster, expert_bytes: int, *, groups: int | None = None,
         previous: Placement | None = None, max_move_bytes: int | None = None, layout: str = "pooled",
         token_bytes: int = DEFAULT_TOKEN_BYTES, tokens_per_step: int | None = None) -> Placement:
    """Place experts for loads [L, E] on `cluster` within each device's memory (all layers together).
    layout "uniform" gives every layer the same slots per device; "pooled" lets hot layers take more.
    token_bytes (dispatch + combine of one token copy) and tokens_per_step (copies per layer and step; None:
    the loads as given) size the communication the plan is scored with (0 bytes: compute only).
    With `previous`, re-plan incrementally: shares are re-solved for free and replicas move only within
    `max_move_bytes` (default: only when a move cuts a layer's max time by >= 1%).
    Returns a Placement with moved_bytes and predicted filled in."""
    loads = validate_loads(loads)
    expert_bytes = check_expert_bytes(expert_bytes)
    layout = check_layout(layout)
    L, E = loads.shape
    check_groups(E, groups)
    check_count("max_move_bytes", max_move_bytes)
    check_count("token_bytes", token_bytes, 1 << 40)
    check_count("tokens_per_step", tokens_per_step, 10**15)
    budget = cluster.budget(expert_bytes)
    check_fits(L, E, budget, expert_bytes, layout)
    steps = step_loads(loads, tokens_per_step)
    if previous is None:
        host, share, by_node = _new_plan(loads, cluster, budget, layout, groups, token_bytes, steps)
        moved = 0
    else:
        host, share, by_node = _replan(loads, cluster, previous, expert_bytes, layout, budget, max_move_bytes,
                                       token_bytes, steps)
        moved = int((host & ~(previous.dense(cluster.num_devices)[0] > 0)).sum()) * expert_bytes
    by_node = route(share, cluster) if by_node is None else by_node
    pl = placement_from_dense(host, share, by_node, expert_bytes, layout)
    pl.moved_bytes = moved
    validate_placement(pl, cluster)  # memory and shares, as any consumer will check them
    pl.predicted = predict(pl, loads, cluster, token_bytes=token_bytes, tokens_per_step=tokens_per_step)
    return pl


def _new_plan(loads, cluster, budget, layout, groups, token_bytes, steps):
    """Compute-only over the whole cluster; where nodes or vendors differ and tokens cost bytes, per layer the
    faster of that and the top-down plans that keep tokens in their island (and node). -> host, share, by_node."""
    caps = layer_caps(loads, budget, layout)
    host, share = _compute_only(loads, cluster, caps, budget if layout == "pooled" else None, groups)
    if token_bytes == 0 or (cluster.num_nodes == 1 and cluster.island.max() == 0):
        return host, share, None
    islands_span_nodes = len(set(zip(cluster.island, cluster.node))) > cluster.island.max() + 1
    by_node = None
    for levels in (2, 1) if cluster.island.max() > 0 and islands_span_nodes else (2,):
        other = top_down_plan(loads, cluster, caps, groups, token_bytes, steps, levels)
        host, share, by_node = _faster(steps, (host, share), other, cluster, token_bytes)
    return host, share, by_node


def _compute_only(loads, cluster, caps, budget, groups) -> tuple[np.ndarray, np.ndarray]:
    thr = cluster.throughput
    host, share = from_scratch(loads, thr, caps, cluster.node, groups)
    return improve(loads, host, share, thr, caps=caps, budget=budget, prev=None, max_moves=UNLIMITED,
                   min_gain=1e-3, max_tries=4 * len(loads))


def _faster(steps, a, b, cluster, token_bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per layer, the (host, share) pair with the lower predicted layer time (compute + communication).
    -> (host, share, by_node)."""
    (ra, ta), (rb, tb) = _routed_times(steps, a, cluster, token_bytes), _routed_times(steps, b, cluster, token_bytes)
    return _take(a, b, ra, rb, _lower(ta, tb))


def _routed_times(steps, plan, cluster, token_bytes) -> tuple[np.ndarray, np.ndarray]:
    """(host, share) -> (its node-first routing, the predicted time of each layer with communication)."""
    routing = route(plan[1], cluster)
    return routing, comm_predict(steps, plan[1], routing, cluster, token_bytes)["layer_s"]


def _lower(ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
    return tb < ta * (1 - 1e-9)


def _take(a, b, ra, rb, pick) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plan a with plan b's layers where pick: (host, share, by_node)."""
    for x, y in ((a[0], b[0]), (a[1], b[1]), (ra, rb)):
        x[pick] = y[pick]
    return a[0], a[1], ra


def _replan(loads, cluster, previous, expert_bytes, layout, budget, max_move_bytes, token_bytes, steps):
    """Moves from the previous hosting under the budget, planned compute-only over the whole cluster and, on
    several islands, inside each island on the tokens it served before (islands.replan_within_islands); per
    layer the faster of the two while the moves stay within the budget, else the faster plan as a whole."""
    L, E = loads.shape
    prev = _previous_host(previous, cluster, loads.shape, expert_bytes)
    thr = cluster.throughput
    old_share = previous.dense(cluster.num_devices)[1]
    moves = {"caps": np.repeat(np.minimum(budget // L, E)[None, :], L, axis=0),
             "budget": budget if layout == "pooled" else None,
             "max_moves": UNLIMITED if max_move_bytes is None else int(max_move_bytes) // expert_bytes,
             "min_gain": 0.01 if max_move_bytes is None else 1e-3}
    moves["max_tries"] = 3 * L + min(moves["max_moves"], L * E)
    host, share = improve(loads, prev.copy(), solve_shares(loads, prev, thr, old_share), thr, prev=prev, **moves)
    if cluster.island.max() == 0 or token_bytes == 0:
        return host, share, None
    a = (host, share)
    b = replan_within_islands(loads, prev, old_share, cluster, moves)
    new_a, new_b = ((x[0] & ~prev).sum((1, 2)) for x in (a, b))  # [L] new replicas per layer
    (ra, ta), (rb, tb) = _routed_times(steps, a, cluster, token_bytes), _routed_times(steps, b, cluster, token_bytes)
    pick = _lower(ta, tb)
    if np.where(pick, new_b, new_a).sum() > moves["max_moves"]:
        pick[:] = tb.sum() < ta.sum()
    return _take(a, b, ra, rb, pick)


def _previous_host(previous: Placement, cluster: Cluster, shape: tuple[int, int], expert_bytes: int) -> np.ndarray:
    if (previous.num_layers, previous.num_experts) != shape:
        raise BalanceError(
            f"previous placement is {previous.num_layers} layers x {previous.num_experts} experts "
            f"but the load is {shape[0]} x {shape[1]}"
        )
    if previous.expert_bytes != expert_bytes:
        raise BalanceError(f"previous placement has expert_bytes {previous.expert_bytes}, not {expert_bytes}")
    validate_placement(previous, cluster)
    return previous.dense(cluster.num_devices)[0] > 0
