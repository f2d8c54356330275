"""Heterogeneous efficiency of expert-parallel training (`portable-moe bench train`): measured job throughput
divided by the sum of each rank's standalone throughput, for even placement vs the balancer's
speed-proportional placement.

Slow ranks are emulated: a rank of speed s sleeps (1/s - 1) times its measured expert-compute time after
each expert forward (TrainConfig.slowdown='sleep'; 'repeat' redoes the compute instead). Standalone
throughput of rank r = tokens/s of a 1-rank job of the same per-rank batch at speed s_r (all experts
local, no communication). Throughput = tokens / median step time (first 2 steps excluded).

Vendor islands (`--islands`): 4 CPU ranks labelled cpu@nvidia x2 + cpu@amd x2, the bridge between them
slowed to --bridge-gbps; island-local vs global routing (bytes over the bridge, step time), the step-time
model calibrated on the runs without a slowed bridge and checked against the others. `--project` says
the model's projections for 16- and 64-GPU mixed clusters (no runs). Every function here reports through
`say(line)`: the lines are the table."""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import balance
from ..models import MoEConfig, load_config, preset
from ..train import TrainConfig, config_from_json
from ..train import placement as pl
from ..train import stepmodel as sm
from ..train.islands import island_plan
from ..train.launch import run
from .layer import BenchError

Say = Callable[[str], None]


def finished(cfg: TrainConfig, work: Path, timeout_s: float):
    """The run's result, or BenchError with the last line the run wrote to stderr."""
    result = run(cfg, work, timeout_s=timeout_s)
    if result.returncode != 0:
        last = next((line for line in reversed(result.stderr.splitlines()) if line.strip()), "no output")
        raise BenchError(f"training run in {work} failed (exit {result.returncode}): {last.strip()[:300]}")
    return result


def throughput(cfg: TrainConfig, work: Path) -> tuple[float, list[dict]]:
    result = finished(cfg, work, 600)
    times = [s["seconds"] for s in result.steps[2:]] or [s["seconds"] for s in result.steps]
    return cfg.batch * cfg.seq / statistics.median(times), result.ranks


def efficiency(args, say: Say):
    """Even vs balanced placement on ranks of the given speeds, against the sum of standalone throughputs."""
    speeds = numbers("--speeds", args.speeds)
    n = len(speeds)
    base = TrainConfig(devices=("cpu",) * n, backends=("reference",) * n, speeds=speeds, steps=args.steps,
                       batch=args.per_rank_batch * n, seq=args.seq, slowdown=args.slowdown, z_loss=1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = model_file(args, work)
        base = base.with_(model=str(model))
        alone = []
        for r, s in enumerate(speeds):
            one = base.with_(devices=("cpu",), backends=("reference",), speeds=(s,), batch=args.per_rank_batch)
            alone.append(throughput(one, work / f"alone{r}")[0])
        bound = sum(alone)
        say(f"speeds {list(speeds)}, slowdown={args.slowdown}, {base.batch}x{base.seq} tokens/step, "
            f"{args.steps} steps, hidden {args.hidden}, expert_ffn {args.expert_ffn}, 8 experts top-2")
        say("standalone tokens/s per rank: " + ", ".join(f"{a:.0f}" for a in alone) + f" (sum {bound:.0f})")
        say("")
        say("| placement | tokens/s | efficiency (vs sum of standalone) | experts hosted per rank |")
        say("|---|---|---|---|")
        for placement in ("even", "balanced"):
            tps, ranks = throughput(base.with_(placement=placement), work / placement)
            hosted = [r["experts_hosted"] for r in sorted(ranks, key=lambda r: r["rank"])]
            say(f"| {placement} | {tps:.0f} | {100 * tps / bound:.1f}% | {hosted} |")


def numbers(option: str, text: str) -> tuple[float, ...]:
    """A comma-separated list of positive numbers, or BenchError naming the option."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) <= 0:
        raise BenchError(f"{option} {text!r} must be positive numbers separated by commas (e.g. 1,0.25)")
    return values


# -- vendor islands: measured runs and the step-time model ----------------------------------------------

ISLAND_DEVICES = ("cpu@nvidia", "cpu@nvidia", "cpu@amd", "cpu@amd")
CORES = 2  # ranks beyond this share cores: a rank's compute throughput scales by min(1, CORES / ranks)


def measure(cfg: TrainConfig, work: Path) -> dict:
    result = finished(cfg, work, 900)
    steps = result.steps[2:] or result.steps
    med = lambda key: statistics.median(s[key] for s in steps)  # noqa: E731
    ranks = lambda key: statistics.median(statistics.mean(s[key]) for s in steps)  # noqa: E731
    return {"cfg": json.loads(cfg.to_json()), "model": load_config(cfg.model).to_dict(), "step_s": med("seconds"),
            "bridge": med("bridge_bytes"), "tokens": med("token_bridge_bytes"), "imbalance": med("imbalance"),
            "island": med("island_bytes"), "compute": ranks("rank_compute_s"), "a2a": ranks("rank_all_to_all_s"),
            "allreduce": ranks("rank_all_reduce_s")}


def cpu_model(r: dict, flops: float, bw: float, alpha: float):
    """The step-time model for a measured CPU job: gloo's bandwidth inside islands, gloo then the emulated
    bridge (serially: the sleep follows the transfer) across; throughput shared among ranks beyond CORES."""
    cfg, m = config_of(r), MoEConfig(**r["model"])
    L, E = m.layers, m.experts
    expert_bytes = 3 * m.hidden * m.expert_ffn * 4
    cluster = pl.cluster_of(cfg, L, E, expert_bytes)
    thr = flops * min(1.0, CORES / cfg.world)
    devices = tuple(balance.ClusterDevice(d.name, f"island{d.node}", d.model, d.node, thr, d.memory_bytes)
                    for d in cluster.devices)
    bridge = bw if not cfg.bridge_gbps else 1 / (1 / bw + 1 / (cfg.bridge_gbps * 1e9))
    links = balance.Links(same_node=bw / 1e9, other_node=bw / 1e9, other_vendor=bridge / 1e9)
    work = sm.workload_of(m, cfg.batch * cfg.seq, cfg.seq, act_bytes=4, dispatch_bytes=4, grad_bytes=4)
    placement = pl.initial(cfg, L, E, expert_bytes)
    return sm.predict(balance.Cluster(devices, links=links), work, placement, cfg.routing, latency_s=alpha)


def calibrate(runs: list[dict]) -> dict[int, tuple[float, float, float]]:
    """Per rank count (oversubscribed cores change both): (FLOP/s of one rank alone on a core, gloo bytes/s,
    seconds per collective call), least squares over the calibration runs' per-rank compute, all-to-all
    and all-reduce seconds. Where bytes do not explain the time (latency-bound), bandwidth is left infinite."""
    out = {}
    for world in sorted({len(r["cfg"]["devices"]) for r in runs}):
        mine = [r for r in runs if len(r["cfg"]["devices"]) == world]
        unit = [cpu_model(r, 1.0, 1.0, 0.0) for r in mine]   # compute in FLOP, comm in bytes
        calls = [cpu_model(r, 1.0, 1e30, 1.0) for r in mine]  # comm in calls
        flops = statistics.median(float(u.compute_s.mean()) / r["compute"] for u, r in zip(unit, mine))
        rows = np.array([[u.all_to_all_s.mean(), c.all_to_all_s.mean()] for u, c in zip(unit, calls)]
                        + [[u.all_reduce_s, c.all_reduce_s] for u, c in zip(unit, calls)])
        rhs = np.array([r["a2a"] for r in mine] + [r["allreduce"] for r in mine])
        inv_bw, alpha = np.linalg.lstsq(rows, rhs, rcond=None)[0]
        if inv_bw <= 0:
            inv_bw, alpha = 1e-30, float(rows[:, 1] @ rhs / (rows[:, 1] @ rows[:, 1]))
        out[world] = (flops, 1.0 / inv_bw, max(alpha, 0.0))
    return out


def config_of(r: dict) -> TrainConfig:
    return config_from_json(json.dumps(r["cfg"]))


def model_file(args, work: Path) -> Path:
    """A debug model config of the asked size, written to work."""
    model = work / "model.json"
    model.write_text(json.dumps({"preset": "debug", "hidden": args.hidden, "expert_ffn": args.expert_ffn,
                                 "head_dim": args.hidden // 4}))
    return model


def island_job(args, work: Path) -> TrainConfig:
    """The 4-rank, 2-island job of these measurements."""
    return TrainConfig(model=str(model_file(args, work)), devices=ISLAND_DEVICES, backends=("reference",) * 4,
                       steps=args.steps, batch=args.per_rank_batch * 4, seq=args.seq, placement="islands")


def islands(args, say: Say):
    if args.load:
        measured = saved(args.load)
        return island_table(measured, measured[0]["calibration_runs"], say)
    bridges = numbers("--bridge-gbps", args.bridge_gbps)
    per_rank = args.per_rank_batch
    if args.pairs:
        return paired(args, bridges, say)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = island_job(args, work)
        two = base.with_(devices=("cpu@nvidia", "cpu@amd"), backends=("reference",) * 2, batch=per_rank * 2,
                         placement="balanced")
        calib = [base, base.with_(routing="global"), two]
        checks = [c.with_(bridge_gbps=b) for b in bridges for c in (base, base.with_(routing="global"), two)]
        checks += [base.with_(placement="even", routing="global", bridge_gbps=bridges[-1])]
        measured = []
        for i, c in enumerate(calib + checks):
            measured.append(measure(c, work / f"run{i}") | {"calibration_runs": len(calib)})
            if args.save:
                Path(args.save).write_text(json.dumps(measured, indent=1))
    island_table(measured, len(calib), say)


def saved(path: str) -> list[dict]:
    """Measurements written by --save (JSON: a list of runs, each with the keys measure() writes)."""
    try:
        measured = json.loads(Path(path).read_text())
        if not isinstance(measured, list) or not measured or not all(
                isinstance(r, dict) and {"cfg", "model", "step_s", "calibration_runs"} <= r.keys() for r in measured):
            raise ValueError("not a list of runs written by --save")
        return measured
    except (OSError, ValueError) as e:
        raise BenchError(f"--load {path}: {e}") from None


def paired(args, bridges: tuple[float, ...], say: Say):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = island_job(args, work)
        say("")
        say("| bridge GB/s | island routing s/step | global routing s/step | global / island (median of pairs) | "
              "bridge bytes global / island |")
        say("|---|---|---|---|---|")
        for b in bridges:
            got = [[measure(base.with_(bridge_gbps=b, routing=k), work / f"{b}-{i}-{k}") for k in ("island", "global")]
                   for i in range(args.pairs)]
            ratio = statistics.median(g["step_s"] / i["step_s"] for i, g in got)
            isl, glo = (statistics.median(p[j]["step_s"] for p in got) for j in (0, 1))
            say(f"| {b} | {isl:.3f} | {glo:.3f} | {ratio:.3f} | {got[0][1]['bridge'] / got[0][0]['bridge']:.2f}x |")


def island_table(measured: list[dict], n_calib: int, say: Say):
    params = calibrate(measured[:n_calib])
    c0, m0 = config_of(measured[0]), measured[0]["model"]
    say(f"4 ranks = 2 islands (cpu@nvidia x2, cpu@amd x2) / 2 ranks = 2 islands of 1; {c0.batch // c0.world}x"
          f"{c0.seq} tokens per rank per step, hidden {m0['hidden']}, expert_ffn {m0['expert_ffn']}, 8 experts "
          f"top-2, {c0.steps} steps (median of steps 3..)")
    for world, (flops, bw, alpha) in params.items():
        say(f"calibrated on the {world}-rank runs without a slowed bridge: {flops / 1e9:.2f} GFLOP/s per rank "
              f"alone, gloo {'latency-bound' if bw > 1e20 else f'{bw / 1e9:.2f} GB/s'}, "
              f"{alpha * 1e3:.2f} ms per collective call")
    say("")
    say("| run | ranks | placement | routing | bridge GB/s | bridge MB/step (tokens) | island MB/step | "
          "rank imbalance | measured s/step (compute) | model s/step (compute) | error | "
          "efficiency (model / measured) |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(measured):
        c = config_of(r)
        pred = cpu_model(r, *params[c.world])
        kind = "calibration" if i < n_calib else "prediction"
        say(f"| {kind} | {c.world} | {c.placement} | {c.routing} | {c.bridge_gbps or 'as is'} | "
              f"{r['bridge'] / 1e6:.2f} ({r['tokens'] / 1e6:.2f}) | {r['island'] / 1e6:.2f} | "
              f"{r.get('imbalance', float('nan')):.2f} | {r['step_s']:.3f} ({r['compute']:.3f}) | "
              f"{pred.serial_s:.3f} ({pred.compute_s.mean():.3f}) | {100 * (pred.serial_s / r['step_s'] - 1):+.0f}% | "
              f"{100 * pred.serial_s / r['step_s']:.0f}% |")
    checks = [(config_of(r), r) for r in measured[n_calib:]]
    for b in sorted({c.bridge_gbps for c, _ in checks}, reverse=True):
        isl, glo = (next((r for c, r in checks if c.bridge_gbps == b and c.world == 4 and c.placement == "islands"
                          and c.routing == k), None) for k in ("island", "global"))
        if isl and glo:
            say(f"bridge {b} GB/s: global / island routing: bridge bytes {glo['bridge'] / isl['bridge']:.2f}x, "
                  f"step time {glo['step_s'] / isl['step_s']:.2f}x")


# -- projections -------------------------------------------------------------------------------------------

GPUS = {  # achieved dense bf16 TFLOP/s assumed (~55% of peak), memory GB
    "H100": ("nvidia", 544.0, 80), "MI300X": ("amd", 653.0, 192), "A100": ("nvidia", 172.0, 80),
    "L40S": ("nvidia", 199.0, 48)}
CLUSTERS = ((("H100", 8), ("MI300X", 8)), (("A100", 4), ("H100", 4), ("L40S", 8)),
            (("MI300X", 4), ("H100", 4), ("L40S", 8)))
MODELS = {"Mixtral-8x7B": ("mixtral-8x7b", 2), "DeepSeek-V3-like": ("deepseek-v3", 1)}  # FP8 dispatch for V3
TOKENS_PER_STEP = 1 << 22
MEMORY_FOR_EXPERTS = 0.7


def gpu_cluster(mix, scale: int) -> balance.Cluster:
    """8 GPUs per node; memory_bytes (all layers together) = 70% of the card's memory."""
    devs, node = [], 0
    for model, count in mix:
        vendor, tflops, gb = GPUS[model]
        for i in range(count * scale):
            devs.append(balance.ClusterDevice(f"{model}-{i}", vendor, model, node + i // 8, tflops * 1e12,
                                              int(MEMORY_FOR_EXPERTS * gb * 1e9)))
        node += (count * scale + 7) // 8
    return balance.Cluster(tuple(devs))


def placements(loads, cluster, expert_bytes, thr_cluster) -> dict:
    out = {}
    for name, make in (("even", lambda: (balance.even_placement(loads, cluster, expert_bytes), "global")),
                       ("speed-proportional (compute only)",
                        lambda: (balance.plan(loads, thr_cluster, expert_bytes, token_bytes=0), "global")),
                       ("EPLB-like", lambda: (balance.eplb_placement(loads, cluster, expert_bytes), "global")),
                       ("island-aware", lambda: island_aware(loads, thr_cluster, expert_bytes))):
        try:
            out[name] = make()
        except Exception as e:  # noqa: BLE001 - a placement that cannot exist is reported as such
            out[name] = str(e).split(";")[0]
    return out


def island_aware(loads, cluster, expert_bytes):
    """One copy of the experts per vendor island where each island can hold one; else the global plan with
    each island's tokens sent home first (by_node)."""
    island = list(dict.fromkeys(d.vendor for d in cluster.devices))
    vendors = balance.Cluster(tuple(balance.ClusterDevice(d.name, d.vendor, d.model, island.index(d.vendor),
                                                          d.throughput, d.memory_bytes) for d in cluster.devices),
                              cluster.links)
    try:
        return island_plan(loads, vendors, expert_bytes), "island"
    except Exception:  # noqa: BLE001
        return balance.plan(loads, vendors, expert_bytes), "island"


def project(say: Say):
    say(f"step-time model projections: {TOKENS_PER_STEP} tokens per optimizer step, skewed expert loads "
          "(gamma(2), seed 0), bridge 3 GB/s, 400 GB/s in a node, 50 GB/s between nodes, 20 us per call; "
          f"{int(MEMORY_FOR_EXPERTS * 100)}% of memory for experts; bf16 gradients")
    say("")
    say("| model | cluster | GPUs | placement | routing | step s (no overlap) | step s (overlap) | "
          "efficiency vs fluid bound (no overlap / overlap) | bridge GB/step | overlap, sharded bridge: s (eff.) |")
    say("|---|---|---|---|---|---|---|---|---|---|")
    for mname, (pname, dispatch) in MODELS.items():
        m = preset(pname)
        expert_bytes = 3 * m.hidden * m.expert_ffn * 2
        loads = np.random.default_rng(0).gamma(2.0, size=(m.layers, m.experts)) + 0.05
        work = sm.workload_of(m, TOKENS_PER_STEP, 4096, act_bytes=2, dispatch_bytes=dispatch, grad_bytes=2)
        for mix in CLUSTERS:
            for scale in (1, 4):
                cluster = gpu_cluster(mix, scale)
                cname = " + ".join(f"{count * scale} {model}" for model, count in mix)
                bound = sm.fluid_bound(cluster, work)
                for plname, got in placements(loads, cluster, expert_bytes, cluster).items():
                    head = f"| {mname} | {cname} | {cluster.num_devices} | {plname} |"
                    if isinstance(got, str):
                        say(f"{head} - | infeasible: {got} | | | | |")
                        continue
                    placement, routing = got
                    pred = sm.predict(cluster, work, placement, routing, loads)
                    wide = sm.predict(cluster, work, placement, routing, loads, sharded_bridge=True)
                    say(f"{head} {routing} | {pred.serial_s:.1f} | {pred.overlap_s:.1f} | "
                          f"{100 * bound / pred.serial_s:.0f}% / {100 * bound / pred.overlap_s:.0f}% | "
                          f"{pred.bridge_bytes / 1e9:.0f} | {wide.overlap_s:.1f} "
                          f"({100 * bound / wide.overlap_s:.0f}%) |")

