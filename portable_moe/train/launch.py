"""Builds the torchrun command for a TrainConfig and runs it on this machine (standalone rendezvous on
127.0.0.1), drawing one progress line per step from rank 0's '@step' lines and collecting each rank's
'@error' line; or prints the command for a multi-node launch. A timeout or an interrupt ends torchrun
(started in a session of its own) and every worker."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .. import knobs
from .config import TrainConfig
from .worker import DONE_PREFIX, ERROR_PREFIX, HISTORY_PREFIX, NOTE_PREFIX, STEP_PREFIX


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(config_file: Path, nproc: int, max_restarts: int = 0, port: int | None = None,
                     nnodes: str = "1", endpoint: str | None = None) -> list[str]:
    endpoint = endpoint or f"127.0.0.1:{port or free_port()}"
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--max-restarts={max_restarts}",
            "--monitor-interval=0.5", "-m", "portable_moe.train.worker", "--config", str(config_file)]


def environment() -> dict[str, str]:
    """Restarted gloo workers reconnect only with the rendezvous store not shared (FIELD-NOTES).
    PYTHONSAFEPATH: `python -m` must not put the working directory first on sys.path, or a source
    checkout there would shadow the installed package. No TRITON_INTERPRET: the Triton backend interprets
    CPU tensors by itself, and set for every worker it would make a GPU rank interpret too."""
    return knobs.child_environment({"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1",
                                    "MASTER_ADDR": "127.0.0.1", "PYTHONSAFEPATH": "1"})


def write_config(cfg: TrainConfig, where: Path, name: str = "train_config.json") -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / name
    path.write_text(cfg.to_json())
    return path


def print_command(cfg: TrainConfig, where: Path, nnodes: int = 1, endpoint: str = "HOST:29500") -> str:
    """The torchrun line for a launch by hand; its config goes to 'command_config.json', beside (never
    over) the train_config.json of a run made here."""
    cmd = torchrun_command(write_config(cfg, where, "command_config.json"), cfg.world // max(nnodes, 1),
                           nnodes=str(nnodes), endpoint=endpoint)
    return "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 PYTHONSAFEPATH=1 " + shlex.join(cmd)


@dataclass
class RunResult:
    returncode: int
    steps: list[dict] = field(default_factory=list)
    ranks: list[dict] = field(default_factory=list)
    stderr: str = ""
    history: list[dict] = field(default_factory=list)   # the steps before a resume, from the checkpoint
    notes: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)    # one per failed rank: rank, at, kind, message
    timed_out: bool = False
    log: Path | None = None

    @property
    def losses(self) -> list[float]:
        """Loss per step; after a restart, the re-run steps replace the ones lost."""
        by_step = {s["step"]: s["loss"] for s in self.steps}
        return [by_step[k] for k in sorted(by_step)]

    def error_lines(self) -> list[str]:
        """Each failed rank's own error first, then ranks that only lost a peer; ranks that said the same
        thing at the same point share a line."""
        grouped: dict[tuple, list[int]] = {}
        for e in sorted(self.errors, key=lambda e: (e["kind"] == "peer", e["rank"])):
            grouped.setdefault((e["at"], e["message"]), []).append(e["rank"])
        return [f"{'rank' if len(ranks) == 1 else 'ranks'} {','.join(map(str, ranks))} at {at}: {message}"
                for (at, message), ranks in grouped.items()]

    def all_steps(self) -> list[dict]:
        """Every step of the run, the earlier ones of a resumed run included; a step re-run after a
        restart replaces the one lost."""
        by_step = {s["step"]: s for s in self.history + self.steps}
        return [by_step[k] for k in sorted(by_step)]


def progress_line(rec: dict, total: int) -> str:
    done = rec["step"]
    bar = "#" * (20 * done // max(total, 1))
    moved = f" moved {rec['moved_bytes'] / 1e6:.2f} MB" if rec.get("moved_bytes") else ""
    return (f"[{bar:<20}] step {done}/{total} loss {rec['loss']:.4f} {rec['tokens_per_s']:.0f} tok/s "
            f"imbalance {rec['imbalance']:.2f}{moved}{traffic_text(rec)}")


def traffic_text(rec: dict) -> str:
    """' bridge 1.20 MB island 3.40 MB a2a 12% allreduce 30%' (shares of the slowest rank's step)."""
    if not rec.get("rank_compute_s"):
        return ""
    r = max(range(len(rec["rank_compute_s"])), key=lambda i: rec["rank_all_to_all_s"][i] + rec["rank_all_reduce_s"][i]
            + rec["rank_compute_s"][i])
    busy = rec["rank_compute_s"][r] + rec["rank_all_to_all_s"][r] + rec["rank_all_reduce_s"][r]
    pct = [100 * rec[k][r] / max(busy, 1e-12) for k in ("rank_all_to_all_s", "rank_all_reduce_s")]
    return (f" bridge {rec['bridge_bytes'] / 1e6:.2f} MB island {rec['island_bytes'] / 1e6:.2f} MB"
            f" a2a {pct[0]:.0f}% allreduce {pct[1]:.0f}%")


def run(cfg: TrainConfig, workdir: Path, max_restarts: int = 0, timeout_s: float | None = 600.0,
        show=None) -> RunResult:
    """Runs the job to completion, failure or `timeout_s` (None: no limit; a hung rank still fails the
    job after cfg.timeout_s); `show(line)` gets one progress line per step and each note."""
    cmd = torchrun_command(write_config(cfg, workdir), cfg.world, max_restarts)
    log = workdir / "stderr.log"
    result = RunResult(0, log=log)
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=environment(),
                                start_new_session=True)

        def expire():
            result.timed_out = True
            kill_job(proc)

        timer = threading.Timer(timeout_s, expire) if timeout_s else None
        if timer:
            timer.start()
        try:
            for line in proc.stdout:
                read_line(line, result, cfg, show)
            result.returncode = proc.wait()
        except BaseException:  # an interrupt (Ctrl-C) or a bad line: no worker outlives the launcher
            kill_job(proc)
            proc.wait()
            raise
        finally:
            if timer:
                timer.cancel()
    result.stderr = log.read_text(errors="replace")
    result.errors = [json.loads(line[len(ERROR_PREFIX):]) for line in result.stderr.splitlines()
                     if line.startswith(ERROR_PREFIX)]
    return result


def read_line(line: str, result: RunResult, cfg: TrainConfig, show):
    if line.startswith(STEP_PREFIX):
        rec = json.loads(line[len(STEP_PREFIX):])
        result.steps.append(rec)
        if show:
            show(progress_line(rec, cfg.steps))
    elif line.startswith(HISTORY_PREFIX):
        result.history = json.loads(line[len(HISTORY_PREFIX):])
    elif line.startswith(NOTE_PREFIX):
        result.notes.append(line[len(NOTE_PREFIX):].strip())
        if show:
            show("note: " + result.notes[-1])
    elif line.startswith(DONE_PREFIX):
        result.ranks = json.loads(line[len(DONE_PREFIX):])


def kill_job(proc: subprocess.Popen):
    """torchrun's process group, then each worker's: torchrun starts every worker in a session of its own,
    and a worker left behind keeps the output pipe open."""
    workers = children(proc.pid)  # before torchrun dies: then they are no longer its children
    for leader in (proc.pid, *workers):
        try:
            os.killpg(leader, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def children(pid: int) -> list[int]:
    """Direct children of pid, from /proc (empty where there is none)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found
