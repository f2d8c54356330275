"""`portable-moe bench`: the benchmarks, one kind per first word.

    portable-moe bench [MODEL ...] [--layer-shape H,F,E,K] [--tokens N ...] [--backend B|all] [--device D]
                       [--dtype float32] [--repeat N] [--json F] [--markdown F] [--plot F.png]
    portable-moe bench balance [--only compute|drift|comm|time] [--steps N] [--markdown F]
    portable-moe bench train [--speeds 1,0.25 ...] [--islands ...] [--project] [--markdown F]

The first: one MoE layer's forward timed on every backend that executes on the device, beside the torch
baselines (eager loops, torch._grouped_mm, transformers' experts implementations) and the device's dense
matmul rate and copy bandwidth; exit status 1 when a backend failed or disagreed with torch eager.
`balance`: expert placements against EPLB by the time model. `train`: expert-parallel training efficiency
on CPU ranks of emulated speeds, vendor islands, and the step-time model's GPU projections."""

from __future__ import annotations

import argparse
import json
import math
import shlex
from pathlib import Path

from ..bench import DEFAULT_SHAPES, BenchError, Case, flagged, layer_case, parse_layer_shape, run_bench
from ..bench.report import load, section
from ..models import PRESETS, ConfigError, load_config, preset
from ..runtime.compile import resolve_device
from .models import DTYPES


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="time one MoE layer on every backend beside torch eager baselines",
                              description=__doc__.split("\n\n")[2], epilog="the other kinds: `portable-moe bench "
                              "balance --help`, `portable-moe bench train --help`")
    p.add_argument("model", nargs="*", metavar="MODEL",
                   help=f"time this model's MoE layer: a preset ({', '.join(PRESETS)}) or a model config JSON "
                        "(several: one after the other)")
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
    p.add_argument("--markdown", default=None, metavar="F", help="write a Markdown section: command, machine, "
                                                                 "versions, date, the table")
    p.add_argument("--plot", default=None, metavar="F.png", help="write a bar chart of GFLOP/s")
    p.set_defaults(func=run)
    kinds = {"balance": balance_parser(p.prog), "train": train_parser(p.prog)}
    p.parse_known_args = dispatch(p.parse_known_args, kinds)


def dispatch(layer_parse, kinds: dict[str, argparse.ArgumentParser]):
    """parse_known_args of `bench`: the kind named by the first word parses the rest (else the layer's
    parser parses it all); the words are kept to print the command in --markdown sections."""
    def parse_known_args(args=None, namespace=None):
        words = list(args or [])
        if words and words[0] in kinds:
            ns, rest = kinds[words[0]].parse_known_args(words[1:], namespace)
        else:
            ns, rest = layer_parse(words, namespace)
        ns.command_line = shlex.join(["portable-moe", "bench", *words])
        return ns, rest
    return parse_known_args


def balance_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{prog} balance", description="Expert placements (ours, uniform and pooled, "
                                "beside EPLB at the same memory) scored by the time model on seeded loads and "
                                "clusters: compute only, drifting loads, with communication, plan time.")
    p.add_argument("--only", choices=("compute", "drift", "comm", "time"), default=None, help="one table only")
    p.add_argument("--steps", type=int, default=5, help="re-plans in the drift table (default: %(default)s)")
    p.add_argument("--markdown", "--out", default=None, metavar="F", help="write a Markdown section: command, "
                                                                          "machine, versions, date, the tables")
    p.set_defaults(func=run_balance_kind)
    return p


def train_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{prog} train", description="Expert-parallel training on CPU ranks: "
                                "efficiency of even vs balanced placement on ranks of emulated speeds (default), "
                                "vendor islands with a slowed bridge (--islands), or the step-time model's "
                                "projections to GPU clusters (--project, no runs).")
    p.add_argument("--islands", action="store_true", help="vendor islands: routing, bridge, step-time model")
    p.add_argument("--project", action="store_true", help="step-time model projections to GPU clusters")
    p.add_argument("--bridge-gbps", default="3,0.03", help="slowed bridges to measure (GB/s), comma-separated")
    p.add_argument("--save", default="", help="with --islands: write the measurements to this JSON file")
    p.add_argument("--load", default="", help="with --islands: re-analyse measurements saved by --save")
    p.add_argument("--pairs", type=int, default=0, help="with --islands: only island vs global routing, "
                   "alternating, N times per bridge (ratios robust to a shared machine's drifting load)")
    p.add_argument("--steps", type=int, default=8, help="training steps per run (default: %(default)s)")
    p.add_argument("--speeds", default="1,0.25", help="rank speeds, comma-separated (default: %(default)s)")
    p.add_argument("--per-rank-batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--slowdown", default="sleep", choices=("sleep", "repeat"))
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--expert-ffn", type=int, default=512)
    p.add_argument("--markdown", default=None, metavar="F", help="write a Markdown section: command, machine, "
                                                                 "versions, date, the table")
    p.set_defaults(func=run_train_kind)
    return p


def positive(args, *names: str):
    for name in names:
        value = getattr(args, name.lstrip("-").replace("-", "_"))
        if value < 1:
            raise BenchError(f"{name} {value} must be at least 1")


def cases_from(args) -> list[Case]:
    if any(t < 1 for t in args.tokens or []):
        raise BenchError(f"--tokens {args.tokens} must all be positive")
    if args.model and args.layer_shape:
        raise BenchError("give MODEL or --layer-shape, not both")
    if args.model:
        return [Case(model_config(m).with_(dtype=args.dtype), t) for m in args.model for t in args.tokens or [2048]]
    if args.layer_shape:
        shapes = [(*parse_layer_shape(s), t) for s in args.layer_shape for t in args.tokens or [2048]]
    else:
        shapes = [(*s[:4], t) for s in DEFAULT_SHAPES for t in (args.tokens or [s[4]])]
    return [layer_case(*s, args.dtype) for s in shapes]


def model_config(name: str):
    try:
        return preset(name) if name in PRESETS else load_config(name)
    except ConfigError as e:
        raise BenchError(f"MODEL '{name}': {e} (bench takes a preset or a model config JSON)") from None


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table(report: dict) -> list[str]:
    d = report["device"]
    lines = [f"device {d['id']} ({d['name']}), {report['threads']} threads, torch {report['torch']}, "
             f"median of {report['repeat']} runs after a warm-up; "
             "compile s includes the first (warm-up) call"]
    head = f"  {'variant':20} {'compile s':>9} {'median ms':>10} {'GFLOP/s':>8} {'vs eager':>8} " \
           f"{'of matmul':>9} {'max|diff|':>9}  note"
    for s in report["shapes"]:
        lines += ["", f"{s['label']} ({s['shape']['dtype']}, {s['flops'] / 1e9:.3g} GFLOP of expert GEMMs; "
                      f"dense matmul here: {s['matmul_gflops']:.1f} GFLOP/s)"]
        if s.get("weight_read_ms") is not None:
            lines.append(f"  reading the {s['experts_selected']} selected experts' weights once: "
                         f"{s['weight_read_ms']:.3f} ms at the {s['copy_gbs']:.0f} GB/s measured here "
                         "(no layer can be faster)")
        lines.append(head)
        for r in s["rows"]:
            if r["status"] != "ran":
                lines.append(f"  {r['name']:20} {r['status']}")
                continue
            note = ("WRONG: exceeds tolerance " f"{s['tolerance']:g} x max|y|  " if r["wrong"] else "") + r["placement"]
            lines.append(f"  {r['name']:20} {fmt(r['compile_s'], '9.2f'):>9} {fmt(r['median_ms'], '10.3f'):>10} "
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
    positive(args, "--repeat")
    cases = cases_from(args)
    before = load()
    report = run_bench(cases, resolve_device(args.device), args.backend, args.repeat)
    lines = table(report)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    if args.markdown:
        d, dtype = report["device"], report["shapes"][0]["shape"]["dtype"]
        Path(args.markdown).write_text(section(f"MoE layer forward on {d['id']} ({dtype})", args.command_line,
                                               ["```", *lines, "```"], f"{d['id']} ({d['name']})", before))
    if args.plot:
        plot(report, args.plot)
    return 1 if flagged(report) else 0


def run_balance_kind(args) -> int:
    from ..bench.balance import run_balance, table

    positive(args, "--steps")
    before = load()
    body = [line for title, head, rows in run_balance(args.only, args.steps)
            for line in (f"### {title}", "", *table(head, rows), "")]
    print("\n".join(body))
    if args.markdown:
        Path(args.markdown).write_text(section("Expert load balancer: ours beside EPLB", args.command_line, body,
                                               load_before=before))
    return 0


def run_train_kind(args) -> int:
    from ..bench import train

    positive(args, "--steps", "--per-rank-batch", "--seq", "--hidden", "--expert-ffn")
    if args.pairs < 0:
        raise BenchError(f"--pairs {args.pairs} must be 0 or more")
    if sum(map(bool, (args.islands, args.project))) > 1:
        raise BenchError("give --islands or --project, not both")
    before, body = load(), []

    def say(line: str):
        print(line, flush=True)
        body.append(line)

    if args.project:
        title = "Step-time model projections to GPU clusters"
        train.project(say)
    elif args.islands:
        title = "Vendor islands: island-local vs global routing, a slowed bridge"
        train.islands(args, say)
    else:
        title = "Heterogeneous expert-parallel training: efficiency"
        train.efficiency(args, say)
    if args.markdown:
        Path(args.markdown).write_text(section(title, args.command_line, body, load_before=before))
    return 0
