"""The `plan` subcommand, run through its own argparse parser."""

import argparse
import json

import numpy as np
import pytest

from portable_moe.balance import BalanceError
from portable_moe.cli import plan as plan_cli


def parse(argv):
    ap = argparse.ArgumentParser()
    plan_cli.add_parser(ap.add_subparsers())
    return ap.parse_args(["plan", *argv])


@pytest.fixture
def files(tmp_path):
    devs = [
        {
            "name": f"g{i}",
            "vendor": "nvidia" if i < 2 else "amd",
            "model": "H100" if i < 2 else "MI300X",
            "node": i // 2,
            "throughput": 989.0 if i < 2 else 1307.0,
            "memory_bytes": 6000,
        }
        for i in range(4)
    ]
    (tmp_path / "c.json").write_text(json.dumps({"devices": devs}))
    rng = np.random.default_rng(0)
    np.save(tmp_path / "l.npy", rng.lognormal(0, 1, (3, 16)))
    (tmp_path / "l2.json").write_text(json.dumps({"load": rng.lognormal(0, 1, (3, 16)).tolist()}))
    return tmp_path


def test_plan_then_replan(files, capsys):
    out, png = files / "p.json", files / "p.png"
    args = parse(
        [
            "--load",
            str(files / "l.npy"),
            "--cluster",
            str(files / "c.json"),
            "--expert-bytes",
            "1000",
            "--groups",
            "4",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "max/fluid" in text and "bytes moved 0" in text and "plan time" in text
    obj = json.loads(out.read_text())
    assert obj["num_experts"] == 16 and obj["expert_bytes"] == 1000 and len(obj["layers"]) == 3
    assert png.read_bytes()[:4] == b"\x89PNG"
    args = parse(
        [
            "--load",
            str(files / "l2.json"),
            "--cluster",
            str(files / "c.json"),
            "--expert-bytes",
            "1000",
            "--previous",
            str(out),
            "--max-move-bytes",
            "2000",
            "--json",
            str(files / "q.json"),
        ]
    )
    assert plan_cli.run(args) == 0
    assert json.loads((files / "q.json").read_text())["moved_bytes"] <= 2000


def test_bad_cluster_field(files):
    obj = json.loads((files / "c.json").read_text())
    obj["devices"][2]["speed"] = 1
    (files / "c.json").write_text(json.dumps(obj))
    args = parse(
        ["--load", str(files / "l.npy"), "--cluster", str(files / "c.json"), "--expert-bytes", "1000"]
    )
    with pytest.raises(BalanceError, match="device 2: unknown field 'speed'"):
        plan_cli.run(args)


def test_memory_too_small(files):
    args = parse(
        ["--load", str(files / "l.npy"), "--cluster", str(files / "c.json"), "--expert-bytes", "2000"]
    )
    with pytest.raises(BalanceError, match="12 total slots .* < 16 experts"):
        plan_cli.run(args)


def test_bad_load_file(files):
    (files / "bad.json").write_text(json.dumps({"load": [[1, -1]]}))
    args = parse(
        ["--load", str(files / "bad.json"), "--cluster", str(files / "c.json"), "--expert-bytes", "1000"]
    )
    with pytest.raises(BalanceError, match="layer 0, expert 1"):
        plan_cli.run(args)
