"""`portable-moe plan`: place experts on a mixed-vendor cluster within each device's memory, optionally
re-planning incrementally; our plan beside EPLB at the same memory (or the previous plan)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

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
from ..balance.cluster import LINK_CLASSES
from ..balance.comm import DEFAULT_TOKEN_BYTES
from ..balance.memory import LAYOUTS
from ..balance.plot import per_device, step_ratio

MAX_ROWS = 12  # layers listed one per line; longer plans show the first and last


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plan", help="place MoE experts on a heterogeneous cluster (EPLB replacement)")
    p.add_argument("--load", required=True, help='layers x experts token copies: JSON {"load": [[...]]} or .npy')
    p.add_argument("--cluster", required=True, help='cluster JSON {"devices": [...], "links": {...}}')
    p.add_argument("--expert-bytes", required=True, type=int,
                   help="bytes of one expert's weights in one layer (memory_bytes covers all layers)")
    p.add_argument("--groups", type=int, default=None, help="expert groups (DeepSeek-V3 style), divides experts")
    p.add_argument("--layout", choices=LAYOUTS, default="pooled",
                   help="pooled: hot layers may take more of a device's memory; uniform: the same slots per "
                        "device in every layer (what fixed-slot engines load)")
    p.add_argument("--token-bytes", type=int, default=DEFAULT_TOKEN_BYTES,
                   help=f"bytes one token copy moves, dispatch + combine (default {DEFAULT_TOKEN_BYTES} = "
                        "hidden 7168 x (1 byte FP8 out + 2 bytes BF16 back); 0: compute only)")
    p.add_argument("--tokens-per-step", type=int, default=None,
                   help="token copies (tokens x top-k) per layer and step; default: each layer's load as given")
    p.add_argument("--previous", default=None, help="previous placement JSON: re-plan incrementally")
    p.add_argument("--max-move-bytes", type=int, default=None, help="budget of bytes moved when re-planning")
    p.add_argument("--json", default=None, help="write the placement JSON here")
    p.add_argument("--plot", default=None, help="write a PNG of per-device compute and communication here")
    p.set_defaults(func=run)


def _check_output(path, flag: str) -> None:
    """Refuse an output whose folder is missing or not writable before any work is done."""
    if path is None:
        return
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise BalanceError(f"{flag} {path}: is a directory, expected a file name")
    if not folder.is_dir():
        raise BalanceError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise BalanceError(f"{flag} {path}: folder {folder} is not writable")


def _baseline(loads, cluster, expert_bytes, groups, opts):
    try:
        return "EPLB", eplb_placement(loads, cluster, expert_bytes, groups=groups, **opts)
    except BalanceError as e:
        print(f"EPLB at the same memory: {e}; comparing with one copy per expert round-robin instead")
        return "even", even_placement(loads, cluster, expert_bytes, **opts)


def run(args: argparse.Namespace) -> int:
    _check_output(args.json, "--json")
    _check_output(args.plot, "--plot")
    cluster = load_cluster(args.cluster)
    loads = load_loads(args.load)
    previous = load_placement(args.previous, cluster) if args.previous else None
    if args.max_move_bytes is not None and previous is None:
        raise BalanceError("--max-move-bytes needs --previous (a from-scratch plan moves everything)")
    opts = {"token_bytes": args.token_bytes, "tokens_per_step": args.tokens_per_step}
    import scipy.optimize  # noqa: F401  (the flow bound's solver, imported before the planner is timed)

    t0 = time.perf_counter()
    pl = plan(loads, cluster, args.expert_bytes, groups=args.groups, previous=previous,
              max_move_bytes=args.max_move_bytes, layout=args.layout, **opts)
    ms = (time.perf_counter() - t0) * 1000
    if previous is not None:
        label, before = "previous", predict(previous, loads, cluster, **opts)
    else:
        label, base = _baseline(loads, cluster, args.expert_bytes, args.groups, opts)
        before = base.predicted
    _print_layers(pl.predicted, before, label)
    _print_devices(pl.predicted, before, label, cluster)
    _print_summary(pl, before, label, ms)
    if previous is not None:
        _print_moves(previous, pl, cluster)
    if args.json:
        save_placement(pl, args.json)
        print(f"placement written to {args.json}")
    if args.plot:
        from ..balance.plot import plot_device_times

        plot_device_times(pl.predicted, before, cluster, args.plot, other_label=label)
        print(f"plot written to {args.plot} (the per-device numbers above)")
    return 0


def _print_layers(after: dict, before: dict, label: str) -> None:
    ratio, imb, layer = (np.asarray(after[k]) for k in ("ratio", "imbalance", "layer_s"))
    L = len(ratio)
    rows = range(L) if L <= MAX_ROWS else [*range(MAX_ROWS // 2), None, *range(L - MAX_ROWS // 2, L)]
    print(f"{'layer':>5} {'max/fluid':>10} {'imbalance':>10} {label + ' max/fluid':>18} {'time ms':>9} "
          f"{label + ' ms':>12}  (time: compute + communication)")
    for i in rows:
        if i is None:
            print(f"{'...':>5}")
            continue
        print(f"{i:>5} {ratio[i]:>10.4f} {imb[i]:>10.4f} {before['ratio'][i]:>18.4f} {layer[i] * 1e3:>9.3f} "
              f"{before['layer_s'][i] * 1e3:>12.3f}")


def _print_devices(after: dict, before: dict, label: str, cluster) -> None:
    (ca, ma), (cb, mb) = per_device(after), per_device(before)
    used, budget = after["memory"]["used_bytes"], after["memory"]["budget_bytes"]
    used_b = before["memory"]["used_bytes"]
    print(f"per device, ms per step (sum over layers); memory GB used / budget:\n"
          f"{'device':>12} {'model':>8} {'compute':>9} {'comm':>9} {label + ' compute':>16} {label + ' comm':>14} "
          f"{'memory':>17} {label + ' memory':>14}")
    for d, dev in enumerate(cluster.devices):
        print(f"{dev.name[:12]:>12} {dev.model[:8]:>8} {ca[d] * 1e3:>9.3f} {ma[d] * 1e3:>9.3f} {cb[d] * 1e3:>16.3f} "
              f"{mb[d] * 1e3:>14.3f} {used[d] / 1e9:>8.2f} / {budget[d] / 1e9:<6.2f} {used_b[d] / 1e9:>14.2f}")


def _print_moves(previous, pl, cluster, shown: int = 8) -> None:
    """The expert copies the re-plan adds (each one expert's weights to load); copies it drops cost nothing."""
    D = cluster.num_devices
    new = np.argwhere((pl.dense(D)[0] > 0) & (previous.dense(D)[0] == 0))  # [k, 3] layer, expert, device
    if len(new) == 0:
        print("no expert copies moved: the previous hosting stays, with shares re-solved for the new load")
        return
    text = ", ".join(f"layer {i} expert {e} -> {cluster.devices[d].name}" for i, e, d in new[:shown])
    more = f" and {len(new) - shown} more" if len(new) > shown else ""
    print(f"expert copies to load: {text}{more}")


def _print_summary(pl, before: dict, label: str, ms: float) -> None:
    s, b = pl.predicted["summary"], before["summary"]
    print("bytes per step over each link class, GB: " + "; ".join(
        f"{c} {s['bytes_per_class'][c] / 1e9:.4g} ({label} {b['bytes_per_class'][c] / 1e9:.4g})" for c in LINK_CLASSES))
    print(f"compute only: step time / fluid bound {step_ratio(pl.predicted):.4f} ({label} {step_ratio(before):.4f}); "
          f"step {s['step_time']:.4g} s vs fluid bound {s['fluid_step_time']:.4g} s "
          f"(sum over layers; throughput read as token copies / s)")
    print(f"with communication ({pl.predicted['token_bytes']} bytes per token copy): step {s['step_s']:.4g} s, "
          f"{s['step_overlap_s']:.4g} s overlapped ({label} {b['step_s']:.4g} s, {b['step_overlap_s']:.4g} s; "
          f"ours / {label} {s['step_s'] / max(b['step_s'], 1e-300):.3f}); flow bound {s['bound_step_s']:.4g} s, "
          f"{s['bound_step_overlap_s']:.4g} s overlapped")
    print(f"memory {sum(pl.predicted['memory']['used_bytes']) / 1e9:.4g} GB of "
          f"{sum(pl.predicted['memory']['budget_bytes']) / 1e9:.4g} GB, layout {pl.layout}; tokens served on their "
          f"own node {s['local_token_fraction']:.3f}; bytes moved {pl.moved_bytes} "
          f"({pl.moved_bytes / pl.expert_bytes:.0f} expert copies); plan time {ms:.1f} ms")
