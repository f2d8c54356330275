"""Errors across processes: each failed rank's own one-line error, 'a peer rank died or hung' only for
the ranks that lost a peer, the point where it happened (setup or step N); the launcher's time limit
ends torchrun and every worker."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from train_jobs import run_job

from portable_moe.cli import train as cli_train
from portable_moe.train import TrainConfig, launch

BASE = TrainConfig(devices=("cpu", "cpu"), backends=("reference", "reference"), steps=4, batch=4, seq=8)


def test_a_ranks_own_error_mid_run_is_its_line_and_its_peer_says_it_lost_a_peer(tmp_path, capsys):
    result = run_job(BASE.with_(fail_at="1:2:raise", timeout_s=20.0), tmp_path)
    assert result.returncode != 0
    by_rank = {e["rank"]: e for e in result.errors}
    assert by_rank[1] == {"rank": 1, "at": "step 2", "kind": "own", "message": "RuntimeError: injected error at step 2"}
    assert by_rank[0]["kind"] == "peer" and by_rank[0]["at"] == "step 2"
    assert cli_train.failed(result, 0) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "portable-moe train: error: training failed:"
    assert err[1] == "  rank 1 at step 2: RuntimeError: injected error at step 2"
    assert err[2].startswith("  rank 0 at step 2: a peer rank died or hung (")
    assert "torchrun" not in "\n".join(err) and "exitcode" not in "\n".join(err)


def workers_of(config_file: Path) -> list[int]:
    """Live processes whose command line names this job's config file."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(config_file).encode() in cmdline:
            found.append(int(pid))
    return found


def test_the_time_limit_ends_torchrun_and_every_worker(tmp_path):
    """Before: the timer killed torchrun only; the hung worker kept its stdout open and the launcher
    waited for it (an hour here)."""
    cfg = BASE.with_(fail_at="1:1:hang", timeout_s=600.0)
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=launch.run(cfg, tmp_path, timeout_s=8)), daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(90)
    assert not thread.is_alive(), "the launcher did not return after its time limit"
    assert box["result"].timed_out and box["result"].returncode != 0
    assert time.monotonic() - start < 60
    time.sleep(1)
    assert workers_of(tmp_path / "train_config.json") == []


def test_the_cli_shows_one_line_when_every_rank_refused_the_same_input(capsys):
    result = launch.RunResult(2, errors=[{"rank": r, "at": "setup", "kind": "input", "message": "no intact checkpoint"}
                                         for r in (0, 1)])
    assert cli_train.failed(result, 0) == 2
    assert capsys.readouterr().err == "portable-moe train: error: no intact checkpoint\n"
