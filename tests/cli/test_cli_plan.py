"""The `plan` subcommand through the CLI entry point: output, files, the README example, bad input."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from portable_moe.cli.main import main

README = Path(__file__).resolve().parents[2] / "README.md"


def run(argv, capsys):
    rc = main(["plan", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def files(tmp_path):
    devs = [{"name": f"g{i}", "vendor": "nvidia" if i < 2 else "amd", "model": "H100" if i < 2 else "MI300X",
             "node": i // 2, "throughput": 989.0 if i < 2 else 1307.0, "memory_bytes": 18000} for i in range(4)]
    (tmp_path / "c.json").write_text(json.dumps({"devices": devs}))
    rng = np.random.default_rng(0)
    np.save(tmp_path / "l.npy", rng.lognormal(0, 1, (3, 16)))
    (tmp_path / "l2.json").write_text(json.dumps({"load": np.roll(rng.lognormal(0, 1, (3, 16)), 3, 1).tolist()}))
    return tmp_path


def base(files, load="l.npy", eb=1000):
    return ["--load", files / load, "--cluster", files / "c.json", "--expert-bytes", eb]


def test_plan_then_replan(files, capsys):
    out, png = files / "p.json", files / "p.png"
    rc, text, _ = run([*base(files), "--groups", 4, "--json", out, "--plot", png], capsys)
    assert rc == 0
    assert re.search(r"step [\d.e+-]+ s", text) and "GB" in text and "ms per step" in text
    assert f"placement written to {out}" in text and f"plot written to {png}" in text
    assert "EPLB" in text and "other_vendor" in text and "flow bound" in text
    obj = json.loads(out.read_text())
    assert obj["num_experts"] == 16 and obj["expert_bytes"] == 1000 and len(obj["layers"]) == 3
    assert obj["layout"] == "pooled" and max(obj["predicted"]["memory"]["used_bytes"]) <= 18000
    assert png.read_bytes()[:4] == b"\x89PNG"
    rc, text, _ = run([*base(files, "l2.json"), "--previous", out, "--max-move-bytes", 2000, "--json",
                       files / "q.json"], capsys)
    assert rc == 0
    moved = json.loads((files / "q.json").read_text())["moved_bytes"]
    assert moved <= 2000
    assert ("expert copies to load: layer" in text) == (moved > 0)


def test_text_and_plot_numbers_agree(files, capsys):
    """The plot's legend ratio is the printed compute-only ratio (the same predicted dict, same formula)."""
    from portable_moe.balance.plot import step_ratio

    rc, text, _ = run([*base(files), "--json", files / "p.json"], capsys)
    pred = json.loads((files / "p.json").read_text())["predicted"]
    assert f"step time / fluid bound {step_ratio(pred):.4f}" in text


def test_readme_example_fits_and_replan_moves(tmp_path, capsys, monkeypatch):
    """Run the README's balancer block as written (python -c lines in a subprocess, portable-moe in-process)."""
    block = README.read_text().split("cat > cluster.json <<'JSON'\n", 1)[1]
    cluster_text, rest = block.split("\nJSON\n", 1)
    commands = [c for c in rest.split("```", 1)[0].splitlines() if c.strip()]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cluster.json").write_text(cluster_text)
    outputs = []
    for c in commands:
        argv = shlex.split(c)
        if argv[0] == "python":
            subprocess.run([sys.executable, *argv[1:]], check=True, cwd=tmp_path)
        else:
            assert argv[:2] == ["portable-moe", "plan"]
            rc, text, err = run(argv[2:], capsys)
            assert rc == 0, err
            outputs.append(text)
    plan = json.loads((tmp_path / "plan.json").read_text())
    cluster = json.loads(cluster_text)["devices"]
    used = [0] * len(cluster)
    for layer in plan["layers"]:
        for r in layer["replicas"]:
            used[r["device"]] += plan["expert_bytes"]
    assert all(u <= d["memory_bytes"] for u, d in zip(used, cluster))
    assert "expert copies to load: layer" in outputs[-1]
    moved = int(re.search(r"bytes moved (\d+)", outputs[-1]).group(1))
    assert 0 < moved <= 1500000000


def test_output_folder_checked_before_planning(files, capsys):
    """A missing folder is reported even when planning would fail too (it is checked first)."""
    rc, _, err = run([*base(files, eb=10**9), "--json", files / "nope" / "p.json"], capsys)
    assert rc == 2 and "--json" in err and "does not exist" in err and "missing" not in err
    rc, _, err = run([*base(files), "--plot", files / "nope" / "p.png"], capsys)
    assert rc == 2 and "--plot" in err and err.count("\n") == 1


def test_memory_too_small(files, capsys):
    rc, _, err = run(base(files, eb=2000), capsys)
    assert rc == 2
    assert "36 expert copies fit" in err and "3 layers x 16 experts = 48; 24000 bytes missing" in err


def test_throughput_too_large_is_refused(files, capsys):
    obj = json.loads((files / "c.json").read_text())
    obj["devices"][1]["throughput"] = 1e308
    (files / "c.json").write_text(json.dumps(obj))
    rc, _, err = run(base(files), capsys)
    assert rc == 2 and "device 1: field 'throughput' must be a number from 1e-06 to 1e+18" in err


def mutate(rng, obj):
    """One random hostile edit somewhere in a JSON tree."""
    hostile = [10**400, -1, 0, 1e308, float("nan"), "x", None, True, [], {}, [[1]], 2**70, -(10**30), 1e-320, "1"]
    paths, stack = [], [((), obj)]
    while stack:
        path, node = stack.pop()
        paths.append(path)
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        stack += [((*path, k), v) for k, v in items]
    path = paths[rng.integers(len(paths))]
    if not path:
        return hostile[rng.integers(len(hostile))]
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    choice = rng.integers(3)
    if choice == 0 and isinstance(parent, dict):
        del parent[path[-1]]
    elif choice == 1 and isinstance(parent, dict):
        parent["extra"] = hostile[rng.integers(len(hostile))]
    else:
        parent[path[-1]] = hostile[rng.integers(len(hostile))]
    return obj


@pytest.mark.parametrize("seed", range(60))
def test_fuzzed_cluster_load_and_plan_files(files, capsys, seed):
    """Random hostile edits of the cluster, load or previous-plan JSON: exit 0 with a plan that fits, or exit 2
    with one line; never a traceback (an uncaught exception fails the test)."""
    rng = np.random.default_rng(seed)
    np.save(files / "l.npy", np.random.default_rng(1).lognormal(0, 1, (2, 6)))
    assert run([*base(files), "--json", files / "p.json"], capsys)[0] == 0
    load = {"load": np.random.default_rng(2).lognormal(0, 1, (2, 6)).tolist()}
    docs = {"c.json": json.loads((files / "c.json").read_text()), "l2.json": load,
            "p.json": json.loads((files / "p.json").read_text())}
    target = ("c.json", "l2.json", "p.json")[seed % 3]
    for _ in range(1 + seed % 3):
        docs[target] = mutate(rng, docs[target])
    for name, doc in docs.items():
        (files / name).write_text(json.dumps(doc))
    rc, _, err = run([*base(files, "l2.json"), "--previous", files / "p.json", "--json", files / "q.json"], capsys)
    assert rc in (0, 2)
    if rc == 2:
        assert err.count("\n") == 1 and err.startswith("portable-moe plan: error: ") and len(err) < 400
    else:
        q = json.loads((files / "q.json").read_text())
        devices = json.loads((files / "c.json").read_text())["devices"]
        assert all(u <= d["memory_bytes"] for u, d in zip(q["predicted"]["memory"]["used_bytes"], devices))


@pytest.mark.parametrize("edit, message", [
    (("l2.json", ["load", 0, 0], 10**400), "load: not a numeric"),
    (("l2.json", ["load", 0, 0], 1e300), "too large"),
    (("c.json", ["devices", 0, "memory_bytes"], 10**30), "'memory_bytes' must be an integer from 0 to 2**62"),
    (("p.json", ["layers", 0, "replicas", 0, "share"], 10**400), "'share' must be a number from 0 to 1"),
    (("p.json", ["layers", 0, "replicas", 0, "device"], 2**70), "'device' must be an integer"),
    (("p.json", ["moved_bytes"], "x"), "'moved_bytes' must be a non-negative integer"),
    (("p.json", ["layout"], "diagonal"), "'layout' must be one of pooled, uniform"),
    (("p.json", ["num_experts"], 10**12), "'num_experts' must be an integer from 1"),
])
def test_named_hostile_values(files, capsys, edit, message):
    assert run([*base(files), "--json", files / "p.json"], capsys)[0] == 0
    (files / "l2.json").write_text(json.dumps({"load": np.ones((3, 16)).tolist()}))
    name, path, value = edit
    doc = json.loads((files / name).read_text())
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    (files / name).write_text(json.dumps(doc))
    rc, _, err = run([*base(files, "l2.json"), "--previous", files / "p.json"], capsys)
    assert rc == 2 and message in err and err.count("\n") == 1
