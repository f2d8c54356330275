"""Score expert placements by the time cost model on seeded scenarios x clusters.

Score = step time / fluid bound, where step time = sum over layers of the slowest device's time
(tokens / throughput) and the fluid bound = sum over layers of tokens / total throughput (1.0 is perfect).
Methods: EPLB (re-implemented, equal slots per GPU, splits tokens evenly), ours (portable_moe.balance.plan),
and on drifting loads incremental re-plans (default movement-aware mode and a bytes budget) vs EPLB
from scratch.

    python benchmarks/bench_balance.py [--out FILE.md] [--steps N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from portable_moe.balance import BalanceError, Cluster, ClusterDevice, eplb_placement, moved_bytes, plan

DSV3_EXPERT = 3 * 7168 * 2048  # fp8 bytes of one DeepSeek-V3 expert, one layer (~44 MB)
MIXTRAL_EXPERT = 3 * 4096 * 14336 * 2  # bf16 bytes of one Mixtral-8x7B expert, one layer (~352 MB)
# dense bf16 TFLOP/s as relative throughput
THROUGHPUT = {"H100": 989.0, "MI300X": 1307.0, "A100": 312.0, "L40S": 181.0}
VENDOR = {"H100": "nvidia", "A100": "nvidia", "L40S": "nvidia", "MI300X": "amd"}
# per-layer expert slots (memory given to one layer's experts // expert bytes), per model
SLOTS = {
    "dsv3": {"H100": 18, "MI300X": 40, "A100": 20, "L40S": 12},
    "mixtral": {"H100": 2, "MI300X": 4, "A100": 2, "L40S": 1},
}
TIGHT_SLOTS_DSV3 = {"H100": 24, "A100": 20, "L40S": 12}  # 272 slots for 256 experts; EPLB gets 12 x 16 = 192


def make_cluster(models: list[tuple[str, int]], per_node: int, slots: dict, expert_bytes: int) -> Cluster:
    devs, i = [], 0
    for model, n in models:
        for _ in range(n):
            devs.append(
                ClusterDevice(
                    f"gpu{i}",
                    VENDOR[model],
                    model,
                    i // per_node,
                    THROUGHPUT[model],
                    slots[model] * expert_bytes,
                )
            )
            i += 1
    return Cluster(tuple(devs))


def clusters(model: str) -> dict[str, Cluster]:
    eb = DSV3_EXPERT if model == "dsv3" else MIXTRAL_EXPERT
    tight = dict(SLOTS[model], **(TIGHT_SLOTS_DSV3 if model == "dsv3" else {}))
    return {
        "16xH100": make_cluster([("H100", 16)], 8, SLOTS[model], eb),
        "8xH100+8xMI300X": make_cluster([("H100", 8), ("MI300X", 8)], 8, SLOTS[model], eb),
        "4xA100+4xH100+8xL40S (tight)": make_cluster([("A100", 4), ("H100", 4), ("L40S", 8)], 4, tight, eb),
    }


def dsv3_loads(rng, L=58, E=256, tokens=8192 * 8) -> np.ndarray:
    """Zipf-ish skew with a random hot set per layer: [L, E]."""
    ranks = np.argsort(rng.random((L, E)), axis=1) + 1.0
    w = ranks ** -rng.uniform(0.6, 1.1, (L, 1)) * rng.lognormal(0, 0.3, (L, E))
    return tokens * w / w.sum(1, keepdims=True)


def mixtral_loads(rng, L=32, E=8, tokens=4096 * 2) -> np.ndarray:
    """Top-2 routing over 8 experts, moderately skewed: [L, E]."""
    w = rng.dirichlet(np.full(E, 2.0), L)
    return tokens * w / w.sum(1, keepdims=True)


def adversarial_loads(rng) -> np.ndarray:
    """DeepSeek-V3-sized, every 4th layer one expert takes every token, every 7th layer is all zero."""
    x = dsv3_loads(rng)
    for i in range(0, x.shape[0], 4):
        hot = rng.integers(x.shape[1])
        x[i] = 0
        x[i, hot] = 8192 * 8
    x[::7] = 0
    return x


def score(pl) -> float:
    s = pl.predicted["summary"]
    return s["step_time"] / s["fluid_step_time"] if s["fluid_step_time"] > 0 else 1.0


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, (time.perf_counter() - t0) * 1000


def static_rows(name: str, loads: np.ndarray, model: str, groups: int | None) -> list[tuple]:
    rows = []
    eb = DSV3_EXPERT if model == "dsv3" else MIXTRAL_EXPERT
    for cname, cl in clusters(model).items():
        rows.append((name, cname, "fluid bound", "1.0000", "-", "-"))
        try:
            base, ms = timed(eplb_placement, loads, cl, eb, groups)
            rows.append((name, cname, "EPLB", f"{score(base):.4f}", "-", f"{ms:.1f}"))
        except BalanceError as e:
            rows.append((name, cname, "EPLB", f"fails: {str(e)[:60]}...", "-", "-"))
        plan(loads, cl, eb, groups=groups)  # warm-up
        ours, ms = timed(plan, loads, cl, eb, groups=groups)
        rows.append((name, cname, "ours", f"{score(ours):.4f}", "-", f"{ms:.1f}"))
    return rows


def drift_rows(rng, steps: int) -> list[tuple]:
    """Loads drift (multiplicative noise, 10%/step); re-plan each step. Bytes moved are means per re-plan."""
    rows = []
    x0 = dsv3_loads(rng)
    seq = [x0]
    for _ in range(steps):
        seq.append(seq[-1] * rng.lognormal(0, 0.1, x0.shape))
    for cname, cl in clusters("dsv3").items():
        budget = 4 * 58 * DSV3_EXPERT  # 4 new replicas per layer per re-plan
        res = {}
        for method, kw in (
            ("ours incremental (default)", {}),
            ("ours incremental (4/layer budget)", {"max_move_bytes": budget}),
        ):
            prev, sc, mv, ms = plan(seq[0], cl, DSV3_EXPERT, groups=8), [], [], []
            for x in seq[1:]:
                prev, t = timed(plan, x, cl, DSV3_EXPERT, groups=8, previous=prev, **kw)
                sc.append(score(prev))
                mv.append(prev.moved_bytes)
                ms.append(t)
            res[method] = (np.mean(sc), np.mean(mv), np.mean(ms))
        try:
            prev, sc, mv, ms = eplb_placement(seq[0], cl, DSV3_EXPERT, 8), [], [], []
            for x in seq[1:]:
                new, t = timed(eplb_placement, x, cl, DSV3_EXPERT, 8)
                sc.append(score(new))
                mv.append(moved_bytes(prev, new, cl.num_devices))
                ms.append(t)
                prev = new
            res["EPLB from scratch"] = (np.mean(sc), np.mean(mv), np.mean(ms))
        except BalanceError:
            rows.append(("dsv3 drift", cname, "EPLB from scratch", "fails (memory)", "-", "-"))
        for m, (s, b, t) in res.items():
            rows.append(("dsv3 drift", cname, m, f"{s:.4f}", f"{b / 1e9:.2f} GB", f"{t:.1f}"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--steps", type=int, default=5, help="re-plans in the drift scenario")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = static_rows("dsv3 zipf (58x256, 8 groups)", dsv3_loads(rng), "dsv3", 8)
    rows += static_rows("mixtral top-2 (32x8)", mixtral_loads(rng), "mixtral", None)
    rows += static_rows("adversarial (one-hot + zero layers)", adversarial_loads(rng), "dsv3", 8)
    rows += drift_rows(rng, args.steps)
    head = (
        "scenario",
        "cluster",
        "method",
        "score (time / fluid)",
        "bytes moved / re-plan",
        "plan time (ms)",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
