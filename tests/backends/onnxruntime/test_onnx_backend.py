"""The onnxruntime backend: truthful availability per device kind, support as data, compile/run on
the CPU against the float64 reference, sessions that follow parameter updates, ahead-of-time lower."""

from __future__ import annotations

import json
from dataclasses import replace

import onnx
import pytest
import torch
from onnx_helpers import graph_and_params

from portable_moe.backends.base import BackendError
from portable_moe.backends.devices import Device, cpu_device
from portable_moe.backends.onnxruntime import OnnxRuntimeBackend
from portable_moe.backends.onnxruntime.providers import choose
from portable_moe.ir import DType
from portable_moe.ir.meanings import run_graph
from portable_moe.ir.onnx import check

CUDA = Device("cuda", 0, "nvidia", "H100", "sm_90", 80 << 30, "cuda 12.8")
ROCM = Device("rocm", 1, "amd", "MI300X", "gfx942", 192 << 30, "hip 6.4")


def test_available_on_cpu_and_truthful_elsewhere():
    import onnxruntime as ort

    backend = OnnxRuntimeBackend()
    assert backend.availability(cpu_device()) is None
    providers = ort.get_available_providers()
    for device, ep in ((CUDA, "CUDAExecutionProvider"), (ROCM, "MIGraphXExecutionProvider")):
        reason = backend.availability(device)
        if ep in providers:
            assert reason is None
        else:
            assert reason.startswith(f"onnxruntime: no {device.kind.upper()} execution provider")
            assert ", ".join(providers) in reason


def test_provider_choice_per_device_kind():
    assert choose(CUDA, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose(ROCM, ["ROCMExecutionProvider", "CPUExecutionProvider"])[0] == "ROCMExecutionProvider"
    assert choose(cpu_device(), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert "no execution provider serves opencl" in choose(replace(CUDA, kind="opencl"), ["CPUExecutionProvider"])


def test_support_declines_with_reasons():
    support = OnnxRuntimeBackend().support(cpu_device())
    assert support.reason("grouped_matmul", DType.float32) is None
    assert support.reason("router", DType.float16) is None
    assert "bfloat16" in support.reason("linear", DType.bfloat16)
    assert "oracle" in support.reason("linear", DType.float64)


def run_both(graph, params, feed):
    backend = OnnxRuntimeBackend()
    exe = backend.compile(graph, cpu_device(), backend.Options(threads=1))
    want = run_graph(graph, {k: v.double() if v.is_floating_point() else v for k, v in feed.items()},
                     {k: v.double() for k, v in params.items()})
    return exe, exe.run(feed, params), want


@pytest.mark.parametrize("name", ["debug", "debug-deepseek"])
def test_model_runs_and_matches_the_reference(name):
    graph, params = graph_and_params(name, layer=False, with_loss=True)
    feed = {"ids": torch.randint(0, 256, (2, 6)), "targets": torch.randint(0, 256, (2, 6))}
    exe, got, want = run_both(graph, params, feed)
    assert not exe.differentiable
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)


def test_session_follows_parameter_updates():
    graph, params = graph_and_params("debug", layer=True)
    feed = {"x": torch.randn(7, 64)}
    exe, first, _ = run_both(graph, params, feed)
    with torch.no_grad():
        params["experts.down"].mul_(2.0)                  # in place, as an optimiser step does
    second = exe.run(feed, params)[0]
    torch.testing.assert_close(second, 2 * first[0], rtol=1e-5, atol=1e-7)
    params["experts.down"].data = 3 * params["experts.down"]    # new storage, same tensor, same _version
    torch.testing.assert_close(exe.run(feed, params)[0], 6 * first[0], rtol=1e-5, atol=1e-7)


def test_params_as_inputs_gives_the_same_result():
    graph, params = graph_and_params("debug-deepseek", layer=True)
    backend = OnnxRuntimeBackend()
    feed = {"x": torch.randn(9, 64)}
    baked = backend.compile(graph, cpu_device(), backend.Options()).run(feed, params)[0]
    fed = backend.compile(graph, cpu_device(), backend.Options(params_as_inputs=True)).run(feed, params)[0]
    torch.testing.assert_close(fed, baked, rtol=1e-6, atol=1e-8)


def test_errors_are_backend_errors():
    graph, params = graph_and_params("debug", layer=True, dtype="bfloat16")
    backend = OnnxRuntimeBackend()
    with pytest.raises(BackendError, match="bfloat16"):
        backend.compile(graph, cpu_device(), backend.Options())
    with pytest.raises(BackendError, match="optimization"):
        backend.Options(optimization="max")
    graph, params = graph_and_params("debug", layer=True)
    exe = backend.compile(graph, cpu_device(), backend.Options())
    with pytest.raises(BackendError, match="missing graph input"):
        exe.run({}, params)


def test_lower_writes_a_checked_onnx_file_and_manifest(tmp_path):
    graph, _ = graph_and_params("debug", layer=False)
    manifest = OnnxRuntimeBackend().lower(graph, "onnx", tmp_path, OnnxRuntimeBackend.Options())
    check(tmp_path / "model.onnx")
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["kernels"][0]["sha256"]["onnx"] == manifest["kernels"][0]["sha256"]["onnx"]
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert {i.name for i in model.graph.input} >= set(graph.param_names())


def test_registered_under_its_entry_point():
    from portable_moe import registry

    assert isinstance(registry.load("onnxruntime"), OnnxRuntimeBackend)


def test_large_models_load_from_external_data(tmp_path, monkeypatch):
    import portable_moe.backends.onnxruntime as ort_backend

    monkeypatch.setattr(ort_backend, "LARGE_MODEL_BYTES", 0)
    graph, params = graph_and_params("debug", layer=True)
    backend = OnnxRuntimeBackend()
    exe = backend.compile(graph, cpu_device(), backend.Options(cache_dir=str(tmp_path)))
    feed = {"x": torch.randn(4, 64)}
    got = exe.run(feed, params)[0]
    assert list(tmp_path.glob("*/model.onnx.data"))
    torch.testing.assert_close(got, run_graph(graph, feed, params)[0], rtol=1e-5, atol=1e-7)
