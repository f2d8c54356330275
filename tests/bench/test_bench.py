"""`portable-moe bench`: every executing backend timed beside the torch eager baselines, numbers that
agree with each other, and a backend that returns wrong numbers flagged (exit status 1)."""

import json
import math

import pytest
import torch

from portable_moe import registry
from portable_moe.backends.devices import cpu_device
from portable_moe.bench import EAGER, SLOW, flagged, layer_case, run_bench
from portable_moe.cli.main import main
from portable_moe.models import build_moe_layer, init_params

TINY = ["--layer-shape", "32,48,4,2", "--tokens", "48", "--repeat", "2", "--device", "cpu"]


def executing_here() -> set[str]:
    dev = cpu_device()
    out = set()
    for name in registry.backend_names():
        try:
            b = registry.load(name)
        except registry.BackendUnavailable:
            continue
        if b.executes and b.availability(dev) is None and (name, "cpu") not in SLOW:
            out.add(name)
    return out


def test_bench_table_json_plot(tmp_path, capsys):
    rc = main(["bench", *TINY, "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png")])
    out = capsys.readouterr()
    assert rc == 0, out.out
    report = json.loads((tmp_path / "b.json").read_text())
    (shape,) = report["shapes"]
    assert shape["flops"] == 2 * 48 * 2 * (32 * 2 * 48 + 48 * 32)
    rows = {r["name"]: r for r in shape["rows"]}
    ran = {n for n, r in rows.items() if r["status"] == "ran"}
    assert set(EAGER) | executing_here() <= ran
    assert "triton" not in rows and any("triton skipped on cpu" in n for n in report["skipped"])
    assert rows["null"]["status"].startswith("unavailable")
    best = min(rows[n]["median_ms"] for n in EAGER)
    for name in ran:
        r = rows[name]
        assert len(r["times_ms"]) == 2 and r["median_ms"] > 0 and math.isfinite(r["gflops"]) and not r["wrong"]
        assert r["gflops"] == pytest.approx(shape["flops"] / r["median_ms"] / 1e6)
        assert r["vs_eager"] == pytest.approx(best / r["median_ms"])
        assert r["of_matmul"] == pytest.approx(r["gflops"] / shape["matmul_gflops"])
        assert (r["compile_s"] is None) == (name in EAGER)
    assert "all results agree" in out.out and "tvm" in out.out and "triton skipped" in out.out
    assert out.err.count("[32->48 E4 K2 T48]") >= len(ran)
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wrong_backend_is_flagged(monkeypatch, capsys):
    backend = registry.load("onnxruntime")
    real = backend.compile

    def corrupt(graph, device, options):
        exe = real(graph, device, options)
        run = exe.run
        monkeypatch.setattr(exe, "run", lambda inputs, params: [o * 1.01 if o.is_floating_point() else o
                                                                 for o in run(inputs, params)])
        return exe

    monkeypatch.setattr(backend, "compile", corrupt)
    assert main(["bench", *TINY, "--backend", "onnxruntime"]) == 1
    out = capsys.readouterr().out
    assert "WRONG" in out and "FLAGGED" in out and "onnxruntime" in out.split("FLAGGED")[1]


def test_baselines_agree_and_flag_checks_tolerance():
    case = layer_case(16, 24, 4, 2, 32, "float32")
    report = run_bench([case], cpu_device(), ["reference"], repeat=1, progress=lambda line: None)
    assert not flagged(report)
    report["shapes"][0]["rows"][0]["wrong"] = True
    assert flagged(report) == [f"{case.label}: torch-loop (WRONG)"]
    params, x_TH = init_params(build_moe_layer(case.cfg), seed=3), torch.randn(case.tokens, case.cfg.hidden)
    loop, grouped = (EAGER[n](case.cfg, params, x_TH) for n in ("torch-loop", "torch-sorted"))
    torch.testing.assert_close(loop, grouped)


def test_bad_layer_shape_is_one_line_error(capsys):
    assert main(["bench", "--layer-shape", "32,48,4"]) == 2
    err = capsys.readouterr().err
    assert "H,F,E,K" in err and len(err.strip().splitlines()) == 1
