"""`portable-moe bench [MODEL] [--layer-shape H,F,E,K] [--tokens N ...] [--backend B|all] [--device D]
[--dtype float32] [--repeat N] [--json F] [--plot F.png]`: one MoE layer's forward timed on every backend
that executes on the device, beside two torch eager baselines and the device's dense matmul rate.
Exit status 1 when a backend failed or returned numbers that disagree with torch eager."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..bench import DEFAULT_SHAPES, BenchError, Case, flagged, layer_case, parse_layer_shape, run_bench
from ..models import PRESETS, ConfigError, load_config, preset
from ..runtime.compile import resolve_device
from .models import DTYPES


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="time one MoE layer on every backend beside torch eager baselines")
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help=f"time this model's MoE layer: a preset ({', '.join(PRESETS)}) or a model config JSON")
    p.add_argument("--layer-shape", action="append", default=None, metavar="H,F,E,K",
                   help="hidden, expert FFN width, experts, top-k (repeatable; default: 1024,1408,16,2 with "
                        "2048 tokens and 512,1792,8,2 with 4096 tokens)")
    p.add_argument("--tokens", type=int, nargs="+", default=None, metavar="N", help="token counts (each shape "
                                                                                    "runs with each)")
    p.add_argument("--backend", action="append", default=None, metavar="B",
                   help="backend name, or 'all' (default; repeatable). Naming a slow one runs it anyway")
    p.add_argument("--device", default=None, help="device id (cpu, cuda:0, ...); default: the first device found")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the layer (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs after one warm-up (default: %(default)s)")
    p.add_argument("--json", default=None, metavar="F", help="write the results as JSON")
    p.add_argument("--plot", default=None, metavar="F.png", help="write a bar chart of GFLOP/s")
    p.set_defaults(func=run)


def cases_from(args) -> list[Case]:
    if any(t < 1 for t in args.tokens or []):
        raise BenchError(f"--tokens {args.tokens} must all be positive")
    if args.model and args.layer_shape:
        raise BenchError("give MODEL or --layer-shape, not both")
    if args.model:
        try:
            cfg = preset(args.model) if args.model in PRESETS else load_config(args.model)
        except ConfigError as e:
            raise BenchError(f"MODEL '{args.model}': {e} (bench takes a preset or a model config JSON)") from None
        return [Case(cfg.with_(dtype=args.dtype), t) for t in args.tokens or [2048]]
    if args.layer_shape:
        shapes = [(*parse_layer_shape(s), t) for s in args.layer_shape for t in args.tokens or [2048]]
    else:
        shapes = [(*s[:4], t) for s in DEFAULT_SHAPES for t in (args.tokens or [s[4]])]
    return [layer_case(*s, args.dtype) for s in shapes]


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table(report: dict) -> list[str]:
    d = report["device"]
    lines = [f"device {d['id']} ({d['name']}), {report['threads']} threads, torch {report['torch']}, "
             f"median of {report['repeat']} runs after a warm-up; "
             "compile s includes the first (warm-up) call"]
    head = f"  {'variant':14} {'compile s':>9} {'median ms':>10} {'GFLOP/s':>8} {'vs eager':>8} {'of matmul':>9} " \
           f"{'max|diff|':>9}  note"
    for s in report["shapes"]:
        lines += ["", f"{s['label']} ({s['shape']['dtype']}, {s['flops'] / 1e9:.3g} GFLOP of expert GEMMs; "
                      f"dense matmul here: {s['matmul_gflops']:.1f} GFLOP/s)", head]
        for r in s["rows"]:
            if r["status"] != "ran":
                lines.append(f"  {r['name']:14} {r['status']}")
                continue
            note = ("WRONG: exceeds tolerance " f"{s['tolerance']:g} x max|y|  " if r["wrong"] else "") + r["placement"]
            lines.append(f"  {r['name']:14} {fmt(r['compile_s'], '9.2f'):>9} {fmt(r['median_ms'], '10.2f'):>10} "
                         f"{fmt(r['gflops'], '8.1f'):>8} {fmt(r['vs_eager'], '7.2f') + 'x':>8} "
                         f"{fmt(r['of_matmul'], '8.0%'):>9} {fmt(r['max_diff'], '9.1e'):>9}  {note}".rstrip())
    lines += [f"note: {n}" for n in report["skipped"]]
    bad = flagged(report)
    lines.append("FLAGGED: " + "; ".join(bad) if bad else "all results agree with torch eager")
    return lines


def plot(report: dict, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = report["shapes"]
    names = list(dict.fromkeys(r["name"] for s in shapes for r in s["rows"] if r["gflops"] is not None))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(2.5 + 2.2 * len(shapes), 4.5))
    for i, name in enumerate(names):
        rows = [next((r for r in s["rows"] if r["name"] == name), None) for s in shapes]
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(shapes))]
        bars = ax.bar(xs, [r["gflops"] if r and r["gflops"] else 0 for r in rows], width, label=name)
        for bar, r in zip(bars, rows):
            if r and r["wrong"]:
                bar.set_hatch("xx")
                ax.annotate("wrong", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", fontsize=7)
    for j, s in enumerate(shapes):
        ax.hlines(s["matmul_gflops"], j - 0.45, j + 0.45, colors="black", linestyles="--",
                  label="dense matmul" if j == 0 else None)
    ax.set_xticks(range(len(shapes)), [s["label"] for s in shapes], fontsize=8)
    ax.set_ylabel("GFLOP/s (expert GEMMs)")
    ax.set_title(f"MoE layer forward, {report['device']['id']} ({report['device']['name'][:40]})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    cases = cases_from(args)
    report = run_bench(cases, resolve_device(args.device), args.backend, args.repeat)
    print("\n".join(table(report)))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    if args.plot:
        plot(report, args.plot)
    return 1 if flagged(report) else 0
