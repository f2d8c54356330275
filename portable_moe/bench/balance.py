"""`portable-moe bench balance`: expert placements scored by the time model on seeded loads x clusters, ours
beside EPLB at the same memory.

Memory: 70% of each GPU (80 GB H100/A100, 192 GB MI300X, 48 GB L40S) for routed-expert weights of all layers
together. Throughput: dense BF16 TFLOP/s / FLOPs of one token through one expert (token copies / s).
Compute only (token_bytes 0): score = step time / fluid bound (sum over layers of the slowest device's
tokens / throughput, over sum of tokens / sum of throughputs; 1.0 is perfect); re-plans as loads drift
(bytes moved per re-plan); plan time. With communication (links 400 / 50 / 3 GB/s same node / other node /
other vendor): step time of compute + communication per the model, ours / EPLB, and the flow bound (LP).
Plan times come from the one timer (portable_moe/timing.py)."""

from __future__ import annotations

import numpy as np

from ..balance import BalanceError, Cluster, ClusterDevice, eplb_placement, moved_bytes, plan, predict
from ..balance.plot import step_ratio
from ..timing import time_ms, timed_call

TFLOPS = {"H100": 989.0, "MI300X": 1307.0, "A100": 312.0, "L40S": 181.0}  # dense BF16
MEMORY_GB = {"H100": 80, "MI300X": 192, "A100": 80, "L40S": 48}
VENDOR = {"H100": "nvidia", "A100": "nvidia", "L40S": "nvidia", "MI300X": "amd"}
EXPERT_FRACTION = 0.7
SHAPES = {  # layers, experts, top-k, hidden, ffn, expert bytes (one layer), groups, token bytes (out + back)
    "dsv3": dict(L=58, E=256, k=8, hidden=7168, ffn=2048, expert_bytes=3 * 7168 * 2048, groups=8,
                 token_bytes=7168 * 3),
    "mixtral": dict(L=32, E=8, k=2, hidden=4096, ffn=14336, expert_bytes=3 * 4096 * 14336 * 2, groups=None,
                    token_bytes=4096 * 4),
}
TOKENS_PER_DEVICE = 4096  # tokens per device and step
CLUSTERS = {
    "16xH100": [("H100", 16)],
    "8xH100+8xMI300X": [("H100", 8), ("MI300X", 8)],
    "4xA100+4xH100+8xL40S": [("A100", 4), ("H100", 4), ("L40S", 8)],
    "4xMI300X+4xH100+8xL40S": [("MI300X", 4), ("H100", 4), ("L40S", 8)],
}


def make_cluster(spec: list[tuple[str, int]], shape: dict, per_node: int = 8) -> Cluster:
    flops = 2 * 3 * shape["hidden"] * shape["ffn"]
    devs, node = [], -1
    for model, n in spec:
        for k in range(n):
            node += k % per_node == 0
            devs.append(ClusterDevice(f"gpu{len(devs)}", VENDOR[model], model, node, TFLOPS[model] * 1e12 / flops,
                                      int(MEMORY_GB[model] * 1e9 * EXPERT_FRACTION)))
    return Cluster(tuple(devs))


def dsv3_loads(rng, L=58, E=256, copies=1.0) -> np.ndarray:
    """Zipf-ish skew with a random hot set per layer: [L, E], each layer summing to `copies`."""
    ranks = np.argsort(rng.random((L, E)), axis=1) + 1.0
    w = ranks ** -rng.uniform(0.6, 1.1, (L, 1)) * rng.lognormal(0, 0.3, (L, E))
    return copies * w / w.sum(1, keepdims=True)


def mixtral_loads(rng, L=32, E=8, copies=1.0) -> np.ndarray:
    """Top-2 routing over 8 experts, moderately skewed: [L, E]."""
    w = rng.dirichlet(np.full(E, 2.0), L)
    return copies * w / w.sum(1, keepdims=True)


def adversarial_loads(rng, copies=1.0) -> np.ndarray:
    """DeepSeek-V3-sized, every 4th layer one expert takes every token, every 7th layer is all zero."""
    x = dsv3_loads(rng, copies=copies)
    for i in range(0, x.shape[0], 4):
        x[i] = 0
        x[i, rng.integers(x.shape[1])] = copies
    x[::7] = 0
    return x


def loads_for(name: str, rng, cluster: Cluster) -> np.ndarray:
    shape = SHAPES["mixtral" if name == "mixtral" else "dsv3"]
    copies = TOKENS_PER_DEVICE * cluster.num_devices * shape["k"]
    return {"dsv3": dsv3_loads, "mixtral": mixtral_loads, "adversarial": adversarial_loads}[name](rng, copies=copies)


def timed(fn, *a, **kw):
    return timed_call(lambda: fn(*a, **kw))


def eplb_or_none(loads, cl, shape, **kw):
    try:
        return eplb_placement(loads, cl, shape["expert_bytes"], groups=shape["groups"], **kw)
    except BalanceError:
        return None


def compute_rows(rng) -> list[tuple]:
    rows = []
    for scen in ("dsv3", "mixtral", "adversarial"):
        shape = SHAPES["mixtral" if scen == "mixtral" else "dsv3"]
        for cname in ("16xH100", "8xH100+8xMI300X", "4xA100+4xH100+8xL40S"):
            cl = make_cluster(CLUSTERS[cname], shape)
            x = loads_for(scen, rng, cl)
            base, base_ms = timed(eplb_or_none, x, cl, shape, token_bytes=0)
            cells = [f"{step_ratio(base.predicted):.4f}" if base else "cannot place", f"{base_ms:.0f}" if base else "-"]
            for layout in ("uniform", "pooled"):
                plan(x, cl, shape["expert_bytes"], groups=shape["groups"], layout=layout, token_bytes=0)  # warm-up
                ours, ms = timed(plan, x, cl, shape["expert_bytes"], groups=shape["groups"], layout=layout,
                                 token_bytes=0)
                cells += [f"{step_ratio(ours.predicted):.4f}", f"{ms:.0f}"]
            rows.append((scen, cname, *cells))
    return rows


def drift_rows(rng, steps: int) -> list[tuple]:
    """Loads drift (x lognormal(0, 0.1) per step); re-plan each step. Bytes moved: mean per re-plan."""
    rows, shape = [], SHAPES["dsv3"]
    eb, g = shape["expert_bytes"], shape["groups"]
    for cname in ("16xH100", "8xH100+8xMI300X", "4xA100+4xH100+8xL40S"):
        cl = make_cluster(CLUSTERS[cname], shape)
        seq = [loads_for("dsv3", rng, cl)]
        for _ in range(steps):
            seq.append(seq[-1] * rng.lognormal(0, 0.1, seq[0].shape))
        cells = []
        for kw in ({}, {"max_move_bytes": 4 * 58 * eb}):
            prev, sc, mv = plan(seq[0], cl, eb, groups=g, token_bytes=0), [], []
            for x in seq[1:]:
                prev = plan(x, cl, eb, groups=g, previous=prev, token_bytes=0, **kw)
                sc.append(step_ratio(prev.predicted))
                mv.append(prev.moved_bytes)
            cells.append(f"{np.mean(mv) / 1e9:.2f} GB ({np.mean(sc):.4f})")
        prev = eplb_or_none(seq[0], cl, shape, token_bytes=0)
        if prev is None:
            cells.append("cannot place")
        else:
            sc, mv = [], []
            for x in seq[1:]:
                new = eplb_placement(x, cl, eb, groups=g, token_bytes=0)
                sc.append(step_ratio(new.predicted))
                mv.append(moved_bytes(prev, new, cl.num_devices))
                prev = new
            cells.append(f"{np.mean(mv) / 1e9:.2f} GB ({np.mean(sc):.4f})")
        rows.append((cname, *cells))
    return rows


def comm_rows(rng) -> list[tuple]:
    rows = []
    for scen in ("dsv3", "mixtral"):
        shape = SHAPES[scen]
        for cname in ("16xH100", "8xH100+8xMI300X", "4xMI300X+4xH100+8xL40S"):
            cl = make_cluster(CLUSTERS[cname], shape)
            x = loads_for(scen, rng, cl)
            kw = dict(groups=shape["groups"], token_bytes=shape["token_bytes"])
            plan(x, cl, shape["expert_bytes"], **kw)  # warm-up
            ours, ms = timed(plan, x, cl, shape["expert_bytes"], **kw)
            alone = plan(x, cl, shape["expert_bytes"], groups=shape["groups"], token_bytes=0)
            alone = predict(alone, x, cl, token_bytes=shape["token_bytes"])["summary"]
            base = eplb_or_none(x, cl, shape, token_bytes=shape["token_bytes"])
            s, L = ours.predicted["summary"], x.shape[0]
            b = base.predicted["summary"] if base else None
            rows.append((
                scen, cname, f"{s['step_s'] / L * 1e3:.2f}",
                f"{b['step_s'] / L * 1e3:.2f}" if b else "cannot place",
                f"**{s['step_s'] / b['step_s']:.3f}** ({s['step_overlap_s'] / b['step_overlap_s']:.3f})" if b else "-",
                f"{alone['step_s'] / L * 1e3:.2f}",
                f"{s['bound_step_s'] / L * 1e3:.2f} ({s['bound_step_overlap_s'] / L * 1e3:.2f})",
                f"{s['bytes_per_class']['other_vendor'] / L / 1e9:.3f}",
                f"{b['bytes_per_class']['other_vendor'] / L / 1e9:.3f}" if b else "-", f"{ms:.0f}",
            ))
    return rows


def best_of(n, fn, *a, **kw) -> float:
    return min(time_ms(lambda: fn(*a, **kw), n, warm_up=False))


def time_rows(rng, repeats: int = 5) -> list[tuple]:
    """DeepSeek-V3 size, best of `repeats` (the machine is shared: the minimum is the least disturbed run)."""
    shape, rows = SHAPES["dsv3"], []
    for spec in ([("H100", 16)], [("H100", 8), ("MI300X", 8)], [("H100", 16), ("MI300X", 16)],
                 [("H100", 32), ("MI300X", 32)]):
        cl = make_cluster(spec, shape)
        x = loads_for("dsv3", rng, cl)
        eb, g = shape["expert_bytes"], shape["groups"]
        eplb = best_of(repeats, eplb_or_none, x, cl, shape, token_bytes=0)
        alone = best_of(repeats, plan, x, cl, eb, groups=g, token_bytes=0)
        comm = best_of(repeats, plan, x, cl, eb, groups=g, token_bytes=shape["token_bytes"])
        name = "+".join(f"{n}x{m}" for m, n in spec)
        rows.append((name, f"{eplb:.0f}", f"{alone:.0f}", f"{comm:.0f}"))
    return rows


PARTS = ("compute", "drift", "comm", "time")


def run_balance(only: str | None = None, steps: int = 5) -> list[tuple[str, tuple, list[tuple]]]:
    """(title, head, rows) of each table asked for (all four unless `only` names one), from seed 0."""
    rng = np.random.default_rng(0)
    tables = []
    if only in (None, "compute"):
        tables.append(("Compute only: step time / fluid bound (1.0 is perfect), plan ms",
                       ("load", "cluster", "EPLB", "ms", "ours uniform", "ms", "ours pooled", "ms"), compute_rows(rng)))
    if only in (None, "drift"):
        tables.append((f"Loads drifting, {steps} re-plans: bytes moved per re-plan (score)",
                       ("cluster", "ours default", "ours budget 4/layer", "EPLB from scratch"), drift_rows(rng, steps)))
    if only in (None, "comm"):
        tables.append(("With communication (links 400 / 50 / 3 GB/s)",
                       ("load", "cluster", "ours ms/layer", "EPLB ms/layer", "ours / EPLB (overlapped)",
                        "compute-only plan ms/layer", "flow bound ms/layer (overlapped)", "bridge GB/layer ours",
                        "bridge GB/layer EPLB", "plan ms"), comm_rows(rng)))
    if only in (None, "time"):
        tables.append(("Plan time, best of 5",
                       ("cluster (58 x 256)", "EPLB ms", "ours compute-only ms", "ours with communication ms"),
                       time_rows(rng)))
    return tables


def table(head, rows) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]
