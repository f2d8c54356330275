"""`portable-moe bench` (the layer): every executing backend timed beside the torch baselines (loops,
torch._grouped_mm, transformers' experts implementations), numbers that agree with each other, the copy
bandwidth and weight-read floor, and a backend that returns wrong numbers flagged (exit status 1)."""

import json
import math

import pytest
import torch

from portable_moe import registry
from portable_moe.backends.devices import cpu_device
from portable_moe.bench import EAGER, SLOW, flagged, layer_case, run_bench
from portable_moe.bench.eager import route
from portable_moe.cli.main import main
from portable_moe.models import build_moe_layer, init_params, preset

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


def test_bench_table_json_markdown_plot(tmp_path, capsys):
    rc = main(["bench", *TINY, "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"),
               "--markdown", str(tmp_path / "b.md")])
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
    md = (tmp_path / "b.md").read_text()
    assert md.startswith("## MoE layer forward on cpu (float32)\n")
    assert f"Regenerate: `portable-moe bench {' '.join(TINY)} --json {tmp_path / 'b.json'}" in md
    assert "- machine: " in md and "torch 2." in md and "- date: 20" in md and "load average" in md
    assert out.out.strip() in md                                   # the table, as printed


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
    loop, grouped = (EAGER[n](case.cfg, params)(x_TH) for n in ("torch-loop", "torch-sorted"))
    torch.testing.assert_close(loop, grouped)


@pytest.mark.parametrize("name", ["debug", "debug-deepseek"])
def test_every_baseline_is_the_same_layer(name):
    """Each baseline (ours to write, or transformers') against the float64 Hugging Face-style loop, with
    sigmoid group routing and a gated shared expert in debug-deepseek."""
    cfg = preset(name).with_(hidden=32, expert_ffn=16)
    params = init_params(build_moe_layer(cfg), seed=5)
    x_TH = torch.randn(40, cfg.hidden, generator=torch.Generator().manual_seed(6))
    want = EAGER["torch-loop"](cfg, {k: v.double() for k, v in params.items()})(x_TH.double())
    for baseline, make in EAGER.items():
        got = make(cfg, params)(x_TH)
        assert got.dtype == torch.float32, baseline
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6, msg=baseline)


def test_a_baseline_that_cannot_run_is_a_note_not_a_failure():
    """torch._grouped_mm on the CPU takes bfloat16 only with 16-byte strides: hidden 12 has 24-byte rows."""
    case = layer_case(12, 24, 4, 2, 16, "bfloat16")
    report = run_bench([case], cpu_device(), ["reference"], repeat=1, progress=lambda line: None)
    rows = {r["name"]: r for r in report["shapes"][0]["rows"]}
    assert rows["torch._grouped_mm"]["status"].startswith("unavailable: RuntimeError")
    assert rows["torch-loop"]["status"] == rows["reference"]["status"] == "ran" and not flagged(report)


def test_copy_bandwidth_and_the_weight_read_floor():
    case = layer_case(16, 24, 8, 2, 3, "float32")
    (shape,) = run_bench([case], cpu_device(), ["reference"], repeat=2, progress=lambda line: None)["shapes"]
    params, x_TH = init_params(build_moe_layer(case.cfg), seed=0), torch.randn(3, 16,
                                                                                generator=torch.Generator().manual_seed(2))
    selected = route(case.cfg, params, x_TH)[1].unique().numel()
    assert 2 <= shape["experts_selected"] == selected <= 6           # 3 tokens, top-2: at most 6 of 8 experts
    assert shape["copy_gbs"] > 0
    assert shape["weight_read_ms"] == pytest.approx(selected * 3 * 16 * 24 * 4 / shape["copy_gbs"] / 1e6)


def test_bad_layer_shape_is_one_line_error(capsys):
    assert main(["bench", "--layer-shape", "32,48,4"]) == 2
    err = capsys.readouterr().err
    assert "H,F,E,K" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("before,after,crowded", [("9.5", "0.4", True), ("0.3", "0.5", False),
                                                 ("unknown", "0.5", False)])
def test_report_says_whether_the_load_was_above_the_core_count(monkeypatch, before, after, crowded):
    from portable_moe.bench import report

    monkeypatch.setattr(report, "load", lambda: after)
    monkeypatch.setattr(report.os, "cpu_count", lambda: 2)
    text = report.section("t", "cmd", ["body"], load_before=before)
    assert f"{before} before, {after} after" in text
    assert ("above the core count" in text) is crowded and ("at most the core count" in text) is not crowded
