"""Builds the torchrun command for a TrainConfig and runs it on this machine (standalone rendezvous on
127.0.0.1), drawing one progress line per step from rank 0's '@step' lines; or prints the command for
a multi-node launch."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .. import knobs
from .config import TrainConfig
from .worker import DONE_PREFIX, STEP_PREFIX


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
    checkout there would shadow the installed package."""
    return knobs.child_environment({"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1",
                                    "MASTER_ADDR": "127.0.0.1", "TRITON_INTERPRET": "1", "PYTHONSAFEPATH": "1"})


def write_config(cfg: TrainConfig, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / "train_config.json"
    path.write_text(cfg.to_json())
    return path


def print_command(cfg: TrainConfig, where: Path, nnodes: int = 1, endpoint: str = "HOST:29500") -> str:
    cmd = torchrun_command(write_config(cfg, where), cfg.world // max(nnodes, 1), nnodes=str(nnodes),
                           endpoint=endpoint)
    return "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 PYTHONSAFEPATH=1 " + shlex.join(cmd)


@dataclass
class RunResult:
    returncode: int
    steps: list[dict] = field(default_factory=list)
    ranks: list[dict] = field(default_factory=list)
    stderr: str = ""

    @property
    def losses(self) -> list[float]:
        """Loss per step; after a restart, the re-run steps replace the ones lost."""
        by_step = {s["step"]: s["loss"] for s in self.steps}
        return [by_step[k] for k in sorted(by_step)]


def progress_line(rec: dict, total: int) -> str:
    done = rec["step"] + 1
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


def run(cfg: TrainConfig, workdir: Path, max_restarts: int = 0, timeout_s: float = 600.0,
        show=None) -> RunResult:
    """Runs the job to completion (or failure); `show(line)` gets one progress line per step."""
    cmd = torchrun_command(write_config(cfg, workdir), cfg.world, max_restarts)
    log = workdir / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=environment())
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        result = RunResult(0)
        try:
            for line in proc.stdout:
                if line.startswith(STEP_PREFIX):
                    rec = json.loads(line[len(STEP_PREFIX):])
                    result.steps.append(rec)
                    if show:
                        show(progress_line(rec, cfg.steps))
                elif line.startswith(DONE_PREFIX):
                    result.ranks = json.loads(line[len(DONE_PREFIX):])
            result.returncode = proc.wait()
        finally:
            timer.cancel()
    result.stderr = log.read_text()
    return result
