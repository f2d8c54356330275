"""Heterogeneous efficiency of expert-parallel training: measured job throughput divided by the sum of
each rank's standalone throughput, for even placement vs the balancer's speed-proportional placement.

Slow ranks are emulated: a rank of speed s sleeps (1/s - 1) times its measured expert-compute time after
each expert forward (TrainConfig.slowdown='sleep'; 'repeat' redoes the compute instead). Standalone
throughput of rank r = tokens/s of a 1-rank job of the same per-rank batch at speed s_r (all experts
local, no communication). Throughput = tokens / median step time (first 2 steps excluded).

Run: python benchmarks/bench_train_hetero.py [--steps 8] [--speeds 1,0.25] [--slowdown sleep]"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from portable_moe.train import TrainConfig
from portable_moe.train.launch import run


def throughput(cfg: TrainConfig, work: Path) -> tuple[float, list[dict]]:
    result = run(cfg, work, timeout_s=600)
    if result.returncode != 0:
        raise SystemExit(f"run failed: {result.stderr[-2000:]}")
    times = [s["seconds"] for s in result.steps[2:]] or [s["seconds"] for s in result.steps]
    return cfg.batch * cfg.seq / statistics.median(times), result.ranks


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--speeds", default="1,0.25")
    p.add_argument("--per-rank-batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--slowdown", default="sleep", choices=("sleep", "repeat"))
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--expert-ffn", type=int, default=512)
    args = p.parse_args()
    speeds = tuple(float(s) for s in args.speeds.split(","))
    n = len(speeds)
    base = TrainConfig(devices=("cpu",) * n, backends=("reference",) * n, speeds=speeds, steps=args.steps,
                       batch=args.per_rank_batch * n, seq=args.seq, slowdown=args.slowdown, z_loss=1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "model.json"
        model.write_text(json.dumps({"preset": "debug", "hidden": args.hidden, "expert_ffn": args.expert_ffn,
                                     "head_dim": args.hidden // 4}))
        base = base.with_(model=str(model))
        alone = []
        for r, s in enumerate(speeds):
            one = base.with_(devices=("cpu",), backends=("reference",), speeds=(s,), batch=args.per_rank_batch)
            alone.append(throughput(one, work / f"alone{r}")[0])
        bound = sum(alone)
        print(f"speeds {list(speeds)}, slowdown={args.slowdown}, {base.batch}x{base.seq} tokens/step, "
              f"{args.steps} steps, hidden {args.hidden}, expert_ffn {args.expert_ffn}, 8 experts top-2")
        print("standalone tokens/s per rank: " + ", ".join(f"{a:.0f}" for a in alone) + f" (sum {bound:.0f})")
        print("| placement | tokens/s | efficiency (vs sum of standalone) | experts hosted per rank |")
        print("|---|---|---|---|")
        for placement in ("even", "balanced"):
            tps, ranks = throughput(base.with_(placement=placement), work / placement)
            hosted = [r["experts_hosted"] for r in sorted(ranks, key=lambda r: r["rank"])]
            print(f"| {placement} | {tps:.0f} | {100 * tps / bound:.1f}% | {hosted} |")


if __name__ == "__main__":
    main()
