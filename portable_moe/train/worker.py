"""The torchrun entry: one rank. Reads RANK/WORLD_SIZE from the environment, joins the job with a
timeout, trains, checkpoints; prints one '@step {json}' line per step on rank 0 for the launcher's
progress bar, and fails fast with a message naming the rank and step when a peer dies or hangs.

Run: python -m torch.distributed.run --nproc-per-node N -m portable_moe.train.worker --config FILE"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from .. import knobs
from .comm import Comm, init_world
from .config import TrainConfig, TrainError, config_from_json
from .trainer import Trainer

STEP_PREFIX = "@step "
DONE_PREFIX = "@done "


def maybe_fail(cfg: TrainConfig, rank: int, step: int):
    """Fault injection for tests ('RANK:STEP' exits, 'RANK:STEP:hang' hangs), on the first attempt only."""
    if not cfg.fail_at or knobs.torchrun_restarts():
        return
    parts = cfg.fail_at.split(":")
    if int(parts[0]) == rank and int(parts[1]) == step:
        if len(parts) > 2 and parts[2] == "hang":
            time.sleep(3600)
        print(f"rank {rank}: injected failure at step {step}", file=sys.stderr, flush=True)
        os._exit(17)


def train(cfg: TrainConfig, rank: int, out=print) -> Trainer:
    torch.set_num_threads(1)
    init_world(rank, cfg.world, cfg.bridge, cfg.timeout_s)
    comm = Comm(rank, list(cfg.devices), cfg.bridge, cfg.native_backends(), cfg.timeout_s, cfg.bridge_gbps)
    trainer = Trainer(cfg, comm)
    for step in range(trainer.start_step, cfg.steps):
        maybe_fail(cfg, rank, step)
        rec = trainer.step(step)
        moved = trainer.replan() if cfg.replan_every and (step + 1) % cfg.replan_every == 0 else 0
        if cfg.checkpoint and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            trainer.save(step + 1)
        if rank == 0:
            out(STEP_PREFIX + json.dumps(vars(rec) | {"moved_bytes": moved}))
    return trainer


def summary(trainer: Trainer) -> dict:
    c = trainer.compute
    return {"rank": trainer.comm.rank, "backend": c.backend, "fallback_reason": c.fallback_reason,
            "moved_bytes": trainer.moved_bytes, "experts_hosted": int(trainer.hosts[:, :, trainer.comm.rank].sum()),
            "losses": [h.loss for h in trainer.history]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="portable_moe.train.worker")
    p.add_argument("--config", required=True, help="TrainConfig JSON file")
    args = p.parse_args(argv)
    rank = knobs.torchrun_rank()
    step = "setup"
    try:
        cfg = config_from_json(Path(args.config).read_text())
        trainer = train(cfg, rank)
        step = "end"
        gathered = gather_summaries(trainer)
        if rank == 0:
            print(DONE_PREFIX + json.dumps(gathered), flush=True)
            if cfg.report:
                from .report import write_report
                write_report(Path(cfg.report), cfg, [vars(h) for h in trainer.history], gathered)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        return 0
    except (TrainError, OSError) as e:
        print(f"rank {rank}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except RuntimeError as e:  # gloo: a peer closed its connection, or the collective timed out
        print(f"rank {rank}: training failed at {step}: a peer rank died or hung "
              f"({type(e).__name__}: {str(e).splitlines()[0][:300]})", file=sys.stderr, flush=True)
        return 3


def gather_summaries(trainer: Trainer) -> list[dict]:
    """Each rank's summary, as JSON text through a padded byte all-gather (no pickling)."""
    world = trainer.comm.world
    mine = torch.frombuffer(bytearray(json.dumps(summary(trainer)).encode()), dtype=torch.uint8)
    if world == 1:
        return [summary(trainer)]
    size = torch.tensor([mine.numel()])
    sizes = [torch.zeros_like(size) for _ in range(world)]
    torch.distributed.all_gather(sizes, size)
    width = int(max(s.item() for s in sizes))
    padded = torch.zeros(width, dtype=torch.uint8)
    padded[:mine.numel()] = mine
    bufs = [torch.zeros_like(padded) for _ in range(world)]
    torch.distributed.all_gather(bufs, padded)
    return [json.loads(bytes(b[:int(s.item())].tolist()).decode()) for b, s in zip(bufs, sizes)]


if __name__ == "__main__":
    sys.exit(main())
