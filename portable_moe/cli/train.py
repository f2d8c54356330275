"""`portable-moe train`: expert-parallel training across heterogeneous ranks, launched through torchrun on
this machine (standalone rendezvous on 127.0.0.1), or printed as a torchrun line for multi-node use."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import registry
from ..models import PRESETS, load_config, preset
from ..runtime import resolve_device
from ..train import TrainConfig, TrainError, checkpoint, launch
from ..train.islands import device_of, island_names
from ..train.report import write_report


def csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in csv(text))
    except ValueError:
        raise TrainError(f"--speeds {text!r} must be comma-separated numbers, e.g. 1,0.5") from None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="expert-parallel training across heterogeneous devices")
    p.add_argument("--config", default="debug", help="model preset (default: debug)")
    p.add_argument("--nproc", type=int, default=2, help="ranks (one per device)")
    p.add_argument("--devices", default=None,
                   help="device per rank, e.g. cpu,cpu,cuda:0; cpu@amd labels an island (default: cpu each)")
    p.add_argument("--backends", default=None, help="backend per rank, e.g. reference,tvm,triton")
    p.add_argument("--speeds", default="", help="emulated relative speed per rank, e.g. 1,0.5 (default: all 1)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=None, help="global sequences per step (default: 4 per rank)")
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--placement", choices=("even", "balanced", "islands"), default="balanced")
    p.add_argument("--routing", choices=("island", "global"), default="island",
                   help="island: tokens stay in their vendor island where the plan's by_node says so")
    p.add_argument("--bridge-gbps", type=float, default=0.0,
                   help="emulate a bridge of this many GB/s between islands (devices like cpu@amd)")
    p.add_argument("--replan-every", type=int, default=0, help="re-plan expert placement every N steps")
    p.add_argument("--max-move-bytes", type=int, default=None)
    p.add_argument("--aux-loss", type=float, default=0.0, help="Switch/GShard balancing loss coefficient")
    p.add_argument("--aux-free-rate", type=float, default=0.0, help="DeepSeek-V3 bias update rate (e.g. 1e-3)")
    p.add_argument("--capacity-factor", type=float, default=0.0, help="0 = dropless")
    p.add_argument("--bridge", default="gloo", help="cross-vendor process-group backend")
    p.add_argument("--checkpoint", default="", help="checkpoint directory")
    p.add_argument("--checkpoint-every", type=int, default=10,
                   help="save every N steps (0: only at the end); the last step is always saved")
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a --checkpoint directory that holds checkpoints (deletes them)")
    p.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts after a failure")
    p.add_argument("--timeout", type=float, default=60.0, help="process-group timeout (s): a hung rank fails the job")
    p.add_argument("--time-limit", type=float, default=0.0,
                   help="stop the whole job after this many seconds (default 0: no limit)")
    p.add_argument("--report", default="train-report", help="directory for report.json and loss.png")
    p.add_argument("--print-command", action="store_true", help="print the torchrun line instead of running")
    p.add_argument("--nnodes", type=int, default=1, help="with --print-command: number of nodes")
    p.add_argument("--json", action="store_true", help="print the report JSON instead of text")
    p.set_defaults(func=run)


def config_of(args) -> TrainConfig:
    n = args.nproc
    if n < 1:
        raise TrainError(f"--nproc {n}: give at least 1 rank")
    devices = csv(args.devices) if args.devices else ("cpu",) * n
    backends = csv(args.backends) if args.backends else ("reference",) * n
    if len(devices) != n:
        raise TrainError(f"--devices names {len(devices)} device(s) but --nproc is {n}")
    return TrainConfig(model=args.config, devices=devices, backends=backends, speeds=floats(args.speeds),
                       steps=args.steps, batch=args.batch or 4 * n, seq=args.seq, placement=args.placement,
                       replan_every=args.replan_every, max_move_bytes=args.max_move_bytes, aux_loss=args.aux_loss,
                       aux_free_rate=args.aux_free_rate, capacity_factor=args.capacity_factor,
                       routing=args.routing, bridge_gbps=args.bridge_gbps, bridge=args.bridge,
                       timeout_s=args.timeout, checkpoint=args.checkpoint,
                       checkpoint_every=args.checkpoint_every if args.checkpoint else 0, resume=args.resume,
                       overwrite=args.overwrite)


def check_names(cfg: TrainConfig, local: bool):
    """Fails here, with the name, what would otherwise fail inside every rank."""
    if cfg.model not in PRESETS:
        if not Path(cfg.model).exists():
            preset(cfg.model)             # raises, listing the presets
        load_config(cfg.model)
    for name in set(cfg.backends):
        registry.load(name)
    if local:
        for device in set(cfg.devices):
            resolve_device(device_of(device))
        if cfg.checkpoint:
            checkpoint.check_start(Path(cfg.checkpoint), cfg.resume, cfg.overwrite)
    island_names(cfg.devices)


def run(args) -> int:
    cfg = config_of(args)
    check_names(cfg, local=not args.print_command)
    report_dir = Path(args.report)
    if args.print_command:
        print(launch.print_command(cfg, report_dir, args.nnodes))
        return 0
    show = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else \
        (lambda line: print(line, flush=True))
    result = launch.run(cfg, report_dir, max_restarts=args.max_restarts, timeout_s=args.time_limit or None,
                        show=show)
    if result.returncode != 0:
        return failed(result, args.time_limit)
    report = write_report(report_dir, cfg, result.all_steps(), result.ranks, resumed_at=steps_before(result),
                          notes=result.notes)
    saved = [f"checkpoints: {cfg.checkpoint} (the newest {checkpoint.KEEP} are kept)"] if cfg.checkpoint else []
    print(json.dumps(report, indent=1) if args.json else "\n".join(report["summary"] + saved + [
        f"report: {report_dir / 'report.json'}, {report_dir / 'loss.png'}"]))
    return 0


def steps_before(result: launch.RunResult) -> int:
    return max((s["step"] for s in result.history), default=0)


def failed(result: launch.RunResult, time_limit: float) -> int:
    """Each failed rank's own line (its exception), ranks that only lost a peer after them; exit 2 when
    every rank refused its input (a setting or a file), else 1."""
    if result.timed_out:
        print(f"portable-moe train: error: the job ran past --time-limit {time_limit:g} s and was stopped "
              f"(output: {result.log})", file=sys.stderr)
        return 1
    if not result.errors:
        print(f"portable-moe train: error: training failed (exit {result.returncode}) and no rank said why; "
              f"output: {result.log}", file=sys.stderr)
        return 1
    if all(e["kind"] == "input" for e in result.errors) and len({e["message"] for e in result.errors}) == 1:
        print(f"portable-moe train: error: {result.errors[0]['message']}", file=sys.stderr)
        return 2
    print("portable-moe train: error: training failed:", file=sys.stderr)
    for line in result.error_lines():
        print(f"  {line}", file=sys.stderr)
    print(f"  full output: {result.log}", file=sys.stderr)
    return 2 if all(e["kind"] == "input" for e in result.errors) else 1
