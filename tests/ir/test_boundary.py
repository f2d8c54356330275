"""The IR boundary: values that would make backends disagree, sizes nothing could allocate, files that
would block or blow up, all refused by `ir verify` with one line and exit status 2."""

from __future__ import annotations

import json
import os
import threading

import pytest

from portable_moe.cli.main import main
from portable_moe.ir import IRError, from_json, to_dict
from portable_moe.models import build_model, build_moe_layer, preset


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def ir_file(tmp_path, obj, name="g.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


def layer(name="debug"):
    return to_dict(build_moe_layer(preset(name)))


def with_attr(obj, op, attr, value):
    node = next(n for n in obj["nodes"] if n["op"] == op)
    node["attrs"][attr] = value
    return obj


@pytest.mark.parametrize("op,attr", [("router", "scaling"), ("attention", "rope_theta"), ("attention", "eps"),
                                     ("rms_norm", "eps")])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_attributes_are_refused(tmp_path, capsys, op, attr, value):
    obj = with_attr(to_dict(build_model(preset("debug-deepseek"))), op, attr, value)
    code, _, err = run_cli(["ir", "verify", ir_file(tmp_path, obj)], capsys)
    assert code == 2 and err.count("\n") == 1 and "finite" in err and attr in err


@pytest.mark.parametrize("dim", [10**12, 2**70, "*", "", "a b", "../x", True, 1.5, -1])
def test_impossible_parameter_dims_are_refused(tmp_path, capsys, dim):
    obj = layer()
    obj["params"][0]["shape"][0] = dim
    code, _, err = run_cli(["ir", "verify", ir_file(tmp_path, obj)], capsys)
    assert code == 2 and err.count("\n") == 1 and len(err) < 400


def test_a_shape_too_large_in_total_is_refused():
    obj = layer()
    obj["params"][0]["shape"] = [2**30, 2**30, 2**30]
    with pytest.raises(IRError, match="more than"):
        from_json(json.dumps(obj))


@pytest.mark.parametrize("version", [True, 1.0, "1", None])
def test_only_the_integer_version_is_read(version):
    obj = layer()
    obj["version"] = version
    with pytest.raises(IRError, match="IR version"):
        from_json(json.dumps(obj))


@pytest.mark.parametrize("text,word", [("[" * 200000, "nested too deeply"),
                                       ('{"version": ' + "9" * 5000 + "}", "digits")])
def test_deep_nesting_and_huge_numbers_are_one_line(tmp_path, capsys, text, word):
    path = tmp_path / "deep.json"
    path.write_text(text)
    code, _, err = run_cli(["ir", "verify", str(path)], capsys)
    assert code == 2 and word in err and err.count("\n") == 1


def test_a_cycle_in_a_huge_graph_is_a_short_line(tmp_path, capsys):
    n = 20000
    obj = {"format": "portable_moe.ir", "version": 1, "name": "ring", "params": [], "outputs": ["v0"],
           "inputs": [{"name": "x", "dtype": "float32", "shape": [4]}],
           "nodes": [{"name": f"node{i}" + "_" * 50, "op": "add", "inputs": ["x", f"v{(i + 1) % n}"],
                      "outputs": [{"name": f"v{i}", "dtype": "float32", "shape": [4]}]} for i in range(n)]}
    code, _, err = run_cli(["ir", "verify", ir_file(tmp_path, obj)], capsys)
    assert code == 2 and "cycle" in err and len(err) < 2000 and err.count("\n") == 1


def test_long_and_multiline_names_stay_one_line(tmp_path, capsys):
    obj = layer()
    obj["nodes"][0]["name"] = "evil\nname" * 10000
    obj["nodes"][0]["op"] = "nope"
    code, _, err = run_cli(["ir", "verify", ir_file(tmp_path, obj)], capsys)
    assert code == 2 and err.count("\n") == 1 and len(err) < 2000


def test_a_fifo_is_refused_not_waited_on(tmp_path, capsys):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    result = {}
    worker = threading.Thread(target=lambda: result.update(code=main(["ir", "verify", str(fifo)])), daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():               # unblock the reader so the test process can end
        with open(fifo, "w"):
            pass
        pytest.fail("ir verify blocked on a FIFO")
    assert result["code"] == 2 and "not a regular file" in capsys.readouterr().err


def test_ir_print_allocates_no_parameters(monkeypatch, capsys, tmp_path):
    from portable_moe.cli import models

    def refuse(*a, **k):
        raise AssertionError("ir print allocated the parameters")

    monkeypatch.setattr(models, "init_params", refuse)
    monkeypatch.setattr(models, "load_params", refuse)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"preset": "debug", "vocab_size": 4_000_000}))
    code, out, _ = run_cli(["ir", "print", str(big)], capsys)
    assert code == 0 and "f32[4000000, 64]" in out.replace("float32", "f32")
