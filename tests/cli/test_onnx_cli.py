"""`portable-moe export`: run() with parsed arguments, the demo hook, and errors that name the problem."""

from __future__ import annotations

import argparse
import json

import onnx
import pytest

from portable_moe.cli import export as export_cli
from portable_moe.ir import IRError


def parse(argv):
    parser = argparse.ArgumentParser()
    export_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["export", *argv])


def test_export_preset_writes_a_checked_file(tmp_path, capsys):
    out = tmp_path / "debug.onnx"
    args = parse(["debug-deepseek", "-o", str(out), "--json"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checker"] == "ok" and summary["bytes"] == out.stat().st_size
    assert summary["op_types"]["TopK"] >= 2                # router + dispatch per layer
    onnx.checker.check_model(str(out), full_check=True)


def test_export_float16_with_external_data(tmp_path, capsys):
    out = tmp_path / "half.onnx"
    args = parse(["debug", "--layer", "-o", str(out), "--dtype", "float16", "--external-data"])
    assert args.func(args) == 0
    assert "(+ external data)" in capsys.readouterr().out
    assert (tmp_path / "half.onnx.data").exists()
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_dtype_on_an_ir_file_is_refused(tmp_path):
    from portable_moe.ir import save
    from portable_moe.models import build_moe_layer, preset

    path = tmp_path / "g.json"
    save(build_moe_layer(preset("debug")), path)
    with pytest.raises(IRError, match="--dtype needs a preset"):
        export_cli.run(parse([str(path), "-o", str(tmp_path / "x.onnx"), "--dtype", "float16"]))


def test_demo_summary_is_one_line():
    line = export_cli.demo_summary()
    assert "\n" not in line
    assert "opset 21" in line and "onnx.checker (full check) ok" in line


def test_fp8_is_refused_and_leaves_no_file(tmp_path, capsys):
    out = tmp_path / "f8.onnx"
    with pytest.raises(SystemExit) as exit_:                # the CLI offers float dtypes it can export
        parse(["debug", "--layer", "-o", str(out), "--dtype", "float8_e4m3fn"])
    assert exit_.value.code == 2 and "float32" in capsys.readouterr().err
    graph, params = export_cli.model_in_dtype("debug", "float8_e4m3fn", True, 0)
    with pytest.raises(IRError, match="fp8"):                # and the exporter refuses an fp8 graph itself
        export_cli.export_file(graph, params, out)
    assert not out.exists()
