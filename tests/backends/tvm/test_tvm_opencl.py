"""The GPU-style code path (thread binding, shared memory, barriers, cross-thread reductions) executed on an
OpenCL device (PoCL)."""

from __future__ import annotations

import json

import pytest
import torch
from tvm_helpers import assert_matches, reference64

from portable_moe.models import build_moe_layer, init_params, preset


@pytest.fixture(scope="module")
def opencl(backend):
    devices = backend.devices()
    if not devices:
        pytest.skip("no OpenCL platform (install pocl-opencl-icd)")
    return devices[0]


def test_opencl_device_is_described(backend, opencl):
    assert opencl.kind == "opencl" and opencl.id == "opencl:0"
    assert backend.availability(opencl) is None
    assert opencl.arch == "pocl" or opencl.vendor != "pocl"


@pytest.mark.parametrize("name", ["debug", "debug-deepseek"])
def test_moe_layer_runs_on_opencl(backend, opencl, cache_dir, name):
    cfg = preset(name).with_(shared_ffn=0)
    graph = build_moe_layer(cfg)
    params = init_params(graph, 0)
    exe = backend.compile(graph, opencl, backend.Options(cache_dir=str(cache_dir)))
    for tokens in (1, 45):
        x = {"x": torch.randn(tokens, cfg.hidden)}
        assert_matches(exe.run(x, params), reference64(graph, x, params))


def test_whole_model_with_loss_runs_on_opencl_alone(backend, opencl, cache_dir):
    from portable_moe.models import build_model

    cfg = preset("debug")
    graph = build_model(cfg, with_loss=True)
    assert backend.unsupported(graph, opencl) == []
    params = init_params(graph, 0)
    exe = backend.compile(graph, opencl, backend.Options(cache_dir=str(cache_dir)))
    assert {p.split(":")[0] for p in exe.placement().values()} == {"tvm"}
    x = {"ids": torch.randint(0, cfg.vocab_size, (2, 7)), "targets": torch.randint(0, cfg.vocab_size, (2, 7))}
    assert_matches(exe.run(x, params), reference64(graph, x, params), rtol=5e-5)


@pytest.mark.parametrize("edge", [8, 16, 32])
def test_every_gpu_tile_edge_computes_the_same_grouped_swiglu_gemm(opencl, cache_dir, edge):
    from portable_moe.backends.tvm.executable import load
    from portable_moe.backends.tvm.kernels.gemm import GpuTile
    from portable_moe.backends.tvm.plan import gmm_step

    E, F, K = 3, 40, 72                       # neither F nor K a multiple of any edge; one empty expert
    step = gmm_step("grouped_matmul", [], E, 2 * F, K, GpuTile(edge), "n/a", True, False)
    call = load(step, "opencl", cache_dir)
    x, w, b = torch.randn(37, K), torch.randn(E, 2 * F, K), torch.randn(2 * F)
    offsets = torch.tensor([0, 21, 21, 37])
    (y,) = call("gmm", x, w, offsets, b)
    want = torch.cat([x[s:t].double() @ w[e].double().T + b.double() for e, (s, t) in
                      enumerate(zip(offsets.tolist(), offsets[1:].tolist()))])
    want = torch.nn.functional.silu(want[:, :F]) * want[:, F:]
    assert_matches([y], [want])


def test_opencl_tile_is_tuned_on_first_use_cached_and_reused(backend, opencl, tmp_path, capfd, monkeypatch):
    from portable_moe.backends.tvm import tuning

    monkeypatch.setattr(tuning, "TUNE_FROM", 0)           # the debug layer's GEMMs count as large
    cfg = preset("debug").with_(shared_ffn=0)
    graph = build_moe_layer(cfg)
    params = init_params(graph, 0)
    x = {"x": torch.randn(45, cfg.hidden)}
    options = backend.Options(cache_dir=str(tmp_path), tune_seconds=60)
    exe = backend.compile(graph, opencl, options)
    err = capfd.readouterr().err
    assert "tuning grouped_matmul+swiglu" in err and opencl.name.strip() in err
    assert "tuned here" in " ".join(exe.placement().values()) and any("tuned here" in n for n in exe.notes)
    saved = json.loads((tmp_path / "tuned-opencl.json").read_text())["entries"]
    assert all(k.split("|")[1] == opencl.name.strip() for k in saved) and len(saved) >= 2
    assert all(v["tile"]["edge"] in (8, 16, 32) for v in saved.values())
    assert_matches(exe.run(x, params), reference64(graph, x, params))

    monkeypatch.setattr(tuning, "runner", lambda *a: pytest.fail("tuned again"))
    again = backend.compile(graph, opencl, options)
    assert "tuning" not in capfd.readouterr().err and again.notes == exe.notes

    skipped = backend.compile(graph, opencl, backend.Options(cache_dir=str(tmp_path / "other"), tune_seconds=0))
    assert all("(default, " in n and "16x16" in n for n in skipped.notes)
    assert not (tmp_path / "other" / "tuned-opencl.json").exists()


def test_devices_line_says_whether_this_opencl_device_is_tuned(backend, opencl, tmp_path, monkeypatch):
    from dataclasses import asdict

    from portable_moe.backends.tuned import TunedTable
    from portable_moe.backends.tvm import tuning
    from portable_moe.backends.tvm.kernels.gemm import GpuTile
    from portable_moe.runtime.compile import options_for

    monkeypatch.setenv("PORTABLE_MOE_CACHE_DIR", str(tmp_path))
    line = backend.schedule(opencl, options_for(backend))
    assert opencl.name.strip() in line and "not tuned" in line and "16x16" in line
    TunedTable(tmp_path / "tvm" / "tuned-opencl.json", tuning.FORMAT, tuning.VERSION).put(
        tuning.shape_key("linear", 64, 64, False, "opencl"), {"tile": asdict(GpuTile(32))})
    assert "tuned here" in backend.schedule(opencl, options_for(backend))
