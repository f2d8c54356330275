"""The torchrun entry: one rank. Reads RANK/WORLD_SIZE from the environment, joins the job with a
timeout, trains, checkpoints; prints one '@step {json}' line per step on rank 0 for the launcher's
progress bar, and on failure one '@error {json}' line naming the rank, where it was (setup, step N) and
its own exception, or that a peer rank died or hung when a collective lost its peer.

Run: python -m torch.distributed.run --nproc-per-node N -m portable_moe.train.worker --config FILE"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from .. import knobs
from ..ir import PortableMoeError
from . import checkpoint as ckpt
from .comm import Comm, init_world
from .config import TrainConfig, config_from_json
from .trainer import Trainer

STEP_PREFIX = "@step "
DONE_PREFIX = "@done "
NOTE_PREFIX = "@note "
HISTORY_PREFIX = "@history "
ERROR_PREFIX = "@error "
PEER_WORDS = ("connection", "closed", "reset by peer", "timed out", "timeout", "broken pipe")


class Phase:
    """Where the rank is, for its error line: 'setup', 'step N' (counted from 1) or 'the end'."""
    at = "setup"


def maybe_fail(cfg: TrainConfig, rank: int, step: int):
    """Fault injection for tests at the start of step STEP (counted from 1), on the first attempt only:
    'RANK:STEP' exits, 'RANK:STEP:hang' hangs, 'RANK:STEP:raise' raises an error of the rank's own."""
    if not cfg.fail_at or knobs.torchrun_restarts():
        return
    parts = cfg.fail_at.split(":")
    if int(parts[0]) == rank and int(parts[1]) == step:
        how = parts[2] if len(parts) > 2 else "exit"
        if how == "hang":
            time.sleep(3600)
        if how == "raise":
            raise RuntimeError(f"injected error at step {step}")
        report_error(rank, f"step {step}", "own", f"injected failure at step {step}")
        os._exit(17)


def start_checkpoints(cfg: TrainConfig, rank: int) -> TrainConfig:
    """A restarted attempt continues from this run's newest checkpoint; a first attempt refuses to
    replace existing checkpoints unless told to (then rank 0 deletes them)."""
    if not cfg.checkpoint:
        return cfg
    root = Path(cfg.checkpoint)
    if knobs.torchrun_restarts():
        return cfg.with_(resume=bool(ckpt.committed(root)), overwrite=False)
    ckpt.check_start(root, cfg.resume, cfg.overwrite)
    if cfg.overwrite and rank == 0:
        ckpt.clear(root)
    return cfg


def say(line: str):
    print(line, flush=True)  # stdout is a pipe to the launcher: each line as it happens


def train(cfg: TrainConfig, rank: int, out=say, phase: Phase | None = None) -> Trainer:
    phase = phase or Phase()
    torch.set_num_threads(1)
    cfg = start_checkpoints(cfg, rank)
    init_world(rank, cfg.world, cfg.bridge, cfg.timeout_s)
    comm = Comm(rank, list(cfg.devices), cfg.bridge, cfg.native_backends(), cfg.timeout_s, cfg.bridge_gbps)
    trainer = Trainer(cfg, comm)
    if rank == 0:
        for note in trainer.notes:
            out(NOTE_PREFIX + note)
        if trainer.history:
            out(HISTORY_PREFIX + json.dumps([vars(h) for h in trainer.history]))
    for index in range(trainer.start_step, cfg.steps):
        number = index + 1
        phase.at = f"step {number}"
        maybe_fail(cfg, rank, number)
        rec = trainer.step(index)
        moved = trainer.replan() if cfg.replan_every and number % cfg.replan_every == 0 else 0
        if cfg.checkpoint and (number == cfg.steps or cfg.checkpoint_every and number % cfg.checkpoint_every == 0):
            trainer.save(number)
        if rank == 0:
            out(STEP_PREFIX + json.dumps(vars(rec) | {"moved_bytes": moved}))
    phase.at = "the end"
    return trainer


def summary(trainer: Trainer) -> dict:
    c = trainer.compute
    return {"rank": trainer.comm.rank, "backend": c.backend, "fallback_reason": c.fallback_reason,
            "moved_bytes": trainer.moved_bytes, "experts_hosted": int(trainer.hosts[:, :, trainer.comm.rank].sum()),
            "losses": [h.loss for h in trainer.history]}


def report_error(rank: int, at: str, kind: str, message: str):
    """kind: 'input' (a setting or a file is wrong), 'own' (this rank failed), 'peer' (another one did)."""
    line = json.dumps({"rank": rank, "at": at, "kind": kind, "message": message})
    print(ERROR_PREFIX + line, file=sys.stderr, flush=True)


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def lost_peer(e: BaseException) -> bool:
    """A collective failed because another rank went away (gloo: connection reset or closed, a timeout),
    as opposed to this rank's own error that merely surfaced inside torch.distributed."""
    tb = e.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    text = str(e).lower()
    in_collective = any(name.startswith("torch.distributed") for name in frames) or "gloo" in text
    return isinstance(e, RuntimeError) and in_collective and any(w in text for w in PEER_WORDS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="portable_moe.train.worker")
    p.add_argument("--config", required=True, help="TrainConfig JSON file")
    args = p.parse_args(argv)
    rank = knobs.torchrun_rank()
    phase = Phase()
    try:
        cfg = config_from_json(Path(args.config).read_text())
        trainer = train(cfg, rank, phase=phase)
        gathered = gather_summaries(trainer)
        if rank == 0:
            print(DONE_PREFIX + json.dumps(gathered), flush=True)
            if cfg.report:
                from .report import write_report
                write_report(Path(cfg.report), cfg, [vars(h) for h in trainer.history], gathered,
                             resumed_at=trainer.start_step, notes=trainer.notes)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        return 0
    except Exception as e:  # noqa: BLE001 - every failure becomes one line naming the rank; the log keeps the trace
        ours = isinstance(e, PortableMoeError)
        if not ours:
            traceback.print_exc()
        if lost_peer(e):
            report_error(rank, phase.at, "peer", f"a peer rank died or hung ({one_line(e)})")
            return 3
        if (ours or isinstance(e, OSError)) and phase.at == "setup":
            report_error(rank, phase.at, "input", str(e) if ours else one_line(e))
            return 2
        report_error(rank, phase.at, "own", one_line(e))
        return 1


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
