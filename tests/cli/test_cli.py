"""The CLI as users meet it: exit codes that tell the truth, one-line errors, no tracebacks."""

import json
import os
import subprocess
import sys

import pytest

from portable_moe.cli.main import main


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-P", "-m", "portable_moe.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_unknown_backend_from_environment_fails_with_one_line():
    r = cli("demo", env={"PORTABLE_MOE_BACKEND": "nonexistent"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown backend 'nonexistent'" in lines[0] and "reference" in lines[0]
    assert "Traceback" not in r.stderr


def test_devices_json_is_truthful(capsys):
    assert main(["devices", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert any(d["kind"] == "cpu" for d in info["devices"])
    rows = {b["name"]: b for b in info["backends"]}
    assert rows["reference"]["devices"]["cpu"]["usable"] is True
    assert rows["null"]["devices"]["cpu"]["usable"] is False and "never executes" in rows["null"]["devices"]["cpu"][
        "reason"]
    for row in rows.values():
        for state in row["devices"].values():
            assert state["usable"] == (state["reason"] is None)
    assert info["selection"]["cpu"]["float32"] in rows


def test_ir_print_json_then_verify(tmp_path, capsys):
    assert main(["ir", "print", "debug-deepseek", "--json"]) == 0
    path = tmp_path / "g.json"
    path.write_text(capsys.readouterr().out)
    assert main(["ir", "verify", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize("content,words", [
    ("{not json", "not valid JSON"),
    ('{"format": "portable_moe.ir", "version": 1, "name": "g", "inputs": [], "params": [], '
     '"nodes": [{"name": "n", "op": "frobnicate", "inputs": [], "outputs": []}], "outputs": []}',
     "node 'n' (op frobnicate): unknown op"),
])
def test_bad_ir_file_is_one_line_and_exit_2(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content)
    r = cli("ir", "verify", str(path))
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_file_and_unknown_preset(capsys):
    assert main(["ir", "print", "no-such-model"]) == 2
    assert "neither a preset" in capsys.readouterr().err


def test_config_json_model(tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"preset": "debug", "experts": 4, "layers": 1}))
    assert main(["ir", "print", str(path)]) == 0
    assert "float32[4, 64, 64]" in capsys.readouterr().out
    path.write_text(json.dumps({"preset": "debug", "expertz": 4}))
    assert main(["ir", "print", str(path)]) == 2
    assert "unknown field(s) ['expertz']" in capsys.readouterr().err


def test_compile_with_null_backend_and_unknown_target(tmp_path, capsys):
    assert main(["compile", "debug", "--backend", "null", "--target", "null", "-o", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "null" / "manifest.json").read_text())
    assert manifest["backend"] == "null" and len(manifest["kernels"]) > 10
    assert main(["compile", "debug", "--backend", "null", "--target", "cuda:sm_1", "-o", str(tmp_path)]) == 2
    assert "unknown target 'cuda:sm_1'; supported: null" in capsys.readouterr().err


def test_help_lists_the_environment_knobs(capsys):
    with pytest.raises(SystemExit):
        main(["devices", "--help"])
    out = capsys.readouterr().out
    assert "PORTABLE_MOE_BACKEND" in out and "PORTABLE_MOE_VALIDATE" in out
