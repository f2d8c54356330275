"""`portable-moe plan`: place experts on a mixed-vendor cluster, optionally re-planning incrementally."""

from __future__ import annotations

import argparse
import time

import numpy as np

from ..balance import (
    BalanceError,
    eplb_placement,
    even_placement,
    load_cluster,
    load_loads,
    load_placement,
    plan,
    predict,
    save_placement,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plan", help="place MoE experts on a heterogeneous cluster (EPLB replacement)")
    p.add_argument("--load", required=True, help='layers x experts tokens: JSON {"load": [[...]]} or .npy')
    p.add_argument("--cluster", required=True, help='cluster JSON {"devices": [...]}')
    p.add_argument(
        "--expert-bytes", required=True, type=int, help="bytes of one expert's weights (one layer)"
    )
    p.add_argument(
        "--groups", type=int, default=None, help="expert groups (DeepSeek-V3 style), divides experts"
    )
    p.add_argument("--previous", default=None, help="previous placement JSON: re-plan incrementally")
    p.add_argument("--max-move-bytes", type=int, default=None, help="budget of bytes moved when re-planning")
    p.add_argument("--json", default=None, help="write the placement JSON here")
    p.add_argument("--plot", default=None, help="write a PNG of per-device time before/after here")
    p.set_defaults(func=run)


def _baseline(loads, cluster, expert_bytes, groups):
    try:
        return "EPLB", eplb_placement(loads, cluster, expert_bytes, groups)
    except BalanceError:
        return "even", even_placement(loads, cluster, expert_bytes)


def run(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.cluster)
    loads = load_loads(args.load)
    previous = load_placement(args.previous, cluster) if args.previous else None
    if args.max_move_bytes is not None and previous is None:
        raise BalanceError("--max-move-bytes needs --previous (a from-scratch plan moves everything)")
    t0 = time.perf_counter()
    pl = plan(
        loads,
        cluster,
        args.expert_bytes,
        groups=args.groups,
        previous=previous,
        max_move_bytes=args.max_move_bytes,
    )
    ms = (time.perf_counter() - t0) * 1000
    if previous is not None:
        label, before = "previous", predict(previous, loads, cluster)
    else:
        label, base = _baseline(loads, cluster, args.expert_bytes, args.groups)
        before = base.predicted
    _print_table(pl.predicted, before, label, pl.moved_bytes, ms)
    if args.json:
        save_placement(pl, args.json)
    if args.plot:
        from portable_moe.balance.plot import plot_device_times

        plot_device_times(before, pl.predicted, cluster, args.plot, before_label=label)
    return 0


def _print_table(after: dict, before: dict, label: str, moved: int, ms: float) -> None:
    ratio, imb, fluid = (np.asarray(after[k]) for k in ("ratio", "imbalance", "fluid_bound"))
    print(f"{'layer':>5} {'max/fluid':>10} {'imbalance':>10} {label + ' max/fluid':>20}")
    for i in range(len(ratio)):
        print(f"{i:>5} {ratio[i]:>10.4f} {imb[i]:>10.4f} {before['ratio'][i]:>20.4f}")
    s, b = after["summary"], before["summary"]
    print(
        f"mean max/fluid {s['mean_ratio']:.4f} (worst {s['max_ratio']:.4f}); {label}: {b['mean_ratio']:.4f}"
    )
    print(
        f"step time {s['step_time']:.6g} vs fluid bound {s['fluid_step_time']:.6g} "
        f"(sum over {len(fluid)} layers)"
    )
    print(f"bytes moved {moved}; plan time {ms:.1f} ms")
