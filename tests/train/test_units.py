"""Fast, single-process checks of the pieces: replica split, config errors, checkpoint atomicity,
migration order, the torchrun line."""

from __future__ import annotations

import pytest
import torch

from portable_moe.ir import PortableMoeError
from portable_moe.train import TrainConfig, TrainError, checkpoint, launch
from portable_moe.train.balance_loop import transfers
from portable_moe.train.expert_parallel import replica_destinations


def test_replicas_split_each_experts_tokens_by_cumulative_share():
    e_R = torch.tensor([0, 1, 0, 0, 1, 0, 2, 0])
    share_EW = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.25, 0.0, 0.75]])
    d_R = replica_destinations(e_R, share_EW)
    # expert 0 has 5 pairs: round(2.5)=2 to rank 0 (first in token order), the other 3 to rank 1
    assert d_R[e_R == 0].tolist() == [0, 0, 1, 1, 1]
    assert d_R[e_R == 1].tolist() == [2, 2]
    assert d_R[e_R == 2].tolist() == [2]


def test_config_errors_name_the_field():
    with pytest.raises(TrainError, match="backends has 1 entries but devices has 2"):
        TrainConfig(devices=("cpu", "cpu"), backends=("reference",))
    with pytest.raises(TrainError, match="batch=5 is not divisible"):
        TrainConfig(batch=5)
    with pytest.raises(PortableMoeError, match="resume needs a checkpoint"):
        TrainConfig(resume=True)


def test_interrupted_save_leaves_latest_checkpoint_intact(tmp_path):
    root = tmp_path / "ckpt"
    tmp = checkpoint.prepare(root, 2)
    checkpoint.write_shard(tmp, 0, {"param/w": torch.ones(3)})
    checkpoint.commit(root, 2, {"step": 2})
    tmp = checkpoint.prepare(root, 4)  # a crash after writing a shard of step 4, before commit
    checkpoint.write_shard(tmp, 0, {"param/w": torch.zeros(3)})
    found, index, damaged = checkpoint.newest_intact(root)
    assert found.name == "step-00000002" and not damaged
    assert checkpoint.load_tensors(found, index, ["param/w"])["param/w"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(TrainError, match="lacks 1 tensor"):
        checkpoint.load_tensors(found, index, ["param/missing"])


def test_migration_sources_are_the_lowest_previous_holder():
    old = torch.zeros(1, 3, 3, dtype=torch.bool)
    new = torch.zeros(1, 3, 3, dtype=torch.bool)
    old[0, 0, [1, 2]] = True
    old[0, 1, 0] = old[0, 2, 2] = True
    new[0, 0, 0] = new[0, 1, 0] = new[0, 1, 2] = new[0, 2, 2] = True
    assert transfers(old, new) == [(0, 0, 1, 0), (0, 1, 0, 2)]


def test_print_command_is_a_torchrun_line(tmp_path):
    cfg = TrainConfig(devices=("cpu",) * 4, backends=("reference", "tvm", "triton", "reference"), batch=8)
    line = launch.print_command(cfg, tmp_path, nnodes=2, endpoint="node0:29500")
    assert "torch.distributed.run" in line and "--nnodes=2" in line and "--nproc-per-node=2" in line
    assert "--rdzv-endpoint=node0:29500" in line and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in line
    assert (tmp_path / "command_config.json").exists() and "command_config.json" in line


def test_cli_prints_the_torchrun_command(tmp_path, capsys):
    import argparse

    from portable_moe.cli import train as cli_train

    parser = argparse.ArgumentParser()
    cli_train.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--nproc", "2", "--backends", "reference,tvm", "--steps", "3",
                              "--report", str(tmp_path), "--print-command"])
    assert args.func(args) == 0
    assert "portable_moe.train.worker" in capsys.readouterr().out
    bad = parser.parse_args(["train", "--nproc", "3", "--devices", "cpu,cpu", "--report", str(tmp_path)])
    with pytest.raises(TrainError, match="--devices names 2 device"):
        bad.func(bad)
    for wrong, words in ((["--config", "nope"], "unknown preset 'nope'"), (["--backends", "reference,foo"],
                                                                          "unknown backend 'foo'")):
        bad = parser.parse_args(["train", "--nproc", "2", *wrong, "--report", str(tmp_path)])
        with pytest.raises(PortableMoeError, match=words):
            bad.func(bad)


def test_console_and_report_count_steps_alike_and_a_resumed_report_keeps_the_earlier_steps(tmp_path):
    from portable_moe.train.report import write_report
    from portable_moe.train.trainer import StepRecord

    records = [vars(StepRecord(step, 5.0 - step / 10, 4.0, 100.0 * (step > 6), 1.0, 0.1, [1.0]))
               for step in range(1, 9)]
    assert "step 8/8 " in launch.progress_line(records[-1] | {"moved_bytes": 0}, 8)
    result = launch.RunResult(0, steps=records[5:], history=records[:6])
    cfg = TrainConfig(devices=("cpu",), backends=("reference",), batch=2, steps=8)
    report = write_report(tmp_path, cfg, result.all_steps(), [], resumed_at=6)
    assert [s["step"] for s in report["steps"]] == list(range(1, 9))
    assert report["summary"][0] == "loss 4.9000 -> 4.2000 over steps 1-8 (resumed after step 6)"
    assert report["summary"][1].startswith("throughput 100 tokens/s"), "only this run's steps count"
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_summary_speaks_of_a_bridge_only_when_there_are_islands():
    from portable_moe.train.report import summarize

    step = {"step": 1, "loss": 5.0, "tokens_per_s": 10.0, "imbalance": 1.0, "routing": "island",
            "bridge_bytes": 0.0, "island_bytes": 2e6, "hierarchical_all_reduces": 0}
    one = summarize([step], [])
    assert "one island: 2.000 MB between ranks per step" in one and not any("bridge" in line for line in one)
    two = summarize([step | {"bridge_bytes": 1e6, "hierarchical_all_reduces": 4}], [])
    assert "island routing: 1.000 MB over the bridge, 2.000 MB inside islands per step; 4 hierarchical " \
           "all-reduces" in two
