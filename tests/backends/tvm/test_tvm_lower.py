"""Ahead-of-time lowering: real artifacts for the CPU, CUDA (PTX checked by ptxas), ROCm, OpenCL, Metal."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from portable_moe.backends.base import BackendError, sha256_file
from portable_moe.backends.tvm.lower import rocm_root
from portable_moe.models import build_moe_layer, preset


@pytest.fixture(scope="module")
def graph():
    return build_moe_layer(preset("debug"))


def lower(backend, graph, target, tmp_path):
    out = tmp_path / target.replace(":", "_")
    manifest = backend.lower(graph, target, out, backend.Options())
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["tvm_version"].startswith("0.27")
    assert len(manifest["kernels"]) == 5            # router, dispatch, gate_up+swiglu, down, combine
    for kernel in manifest["kernels"]:
        for stage, name in kernel["artifacts"].items():
            assert sha256_file(out / name) == kernel["sha256"][stage]
    return out, manifest


def stages(manifest):
    return {s for k in manifest["kernels"] for s in k["artifacts"]}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_ptx_assembles_with_ptxas(backend, graph, tmp_path):
    out, manifest = lower(backend, graph, "cuda:sm_90", tmp_path)
    assert stages(manifest) == {"source", "ptx", "cubin"}
    gmm = next(k for k in manifest["kernels"] if k["op"] == "grouped_matmul")
    source = (out / gmm["artifacts"]["source"]).read_text()
    assert "__shared__" in source and "__syncthreads" in source and "blockIdx.x" in source
    ptxas = shutil.which("ptxas")
    if ptxas:
        for k in manifest["kernels"]:
            proc = subprocess.run([ptxas, "-arch=sm_90", str(out / k["artifacts"]["ptx"]), "-o", str(tmp_path / "x.o")],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(rocm_root(None) is None, reason="no ROCm device libraries (Debian: rocm-device-libs lld-22)")
def test_rocm_code_object(backend, graph, tmp_path):
    out, manifest = lower(backend, graph, "rocm:gfx942", tmp_path)
    assert stages(manifest) == {"amdgcn", "hsaco"}
    for k in manifest["kernels"]:
        assert (out / k["artifacts"]["hsaco"]).read_bytes()[:4] == b"\x7fELF"
        assert "gfx942" in (out / k["artifacts"]["amdgcn"]).read_text()


@pytest.mark.parametrize("target,marker", [("opencl", "__kernel"), ("metal", "kernel void")])
def test_opencl_and_metal_sources_bind_threads(backend, graph, tmp_path, target, marker):
    out, manifest = lower(backend, graph, target, tmp_path)
    for k in manifest["kernels"]:
        text = (out / k["artifacts"]["source"]).read_text()
        assert marker in text
        assert ("get_local_id" in text) or ("thread_position_in_threadgroup" in text)


def test_cpu_library_and_errors(backend, graph, tmp_path):
    out, manifest = lower(backend, graph, "cpu", tmp_path)
    assert stages(manifest) == {"so"} and manifest["mcpu"]
    with pytest.raises(BackendError, match="unknown target"):
        backend.lower(graph, "cuda:sm_42", tmp_path / "bad", backend.Options())
    assert manifest["tvm_version"].startswith("0.27") and len(manifest["kernels"]) == 5


def test_whole_model_lowers_every_node(backend, tmp_path):
    from portable_moe.models import build_model

    graph = build_model(preset("debug"), with_loss=True)
    manifest = backend.lower(graph, "opencl", tmp_path, backend.Options())
    assert manifest["not_lowered"] == []
    lowered = {n for k in manifest["kernels"] for n in k["nodes"]}
    assert lowered == {n.name for n in graph.nodes}
    attention = next(k for k in manifest["kernels"] if k["op"] == "attention")
    assert "__kernel void attend_kernel" in (tmp_path / attention["artifacts"]["source"]).read_text()


def test_manifest_signature_is_enough_to_call_a_lowered_kernel(backend, graph, tmp_path):
    import torch
    import tvm

    out, manifest = lower(backend, graph, "cpu", tmp_path)
    dispatch = next(k for k in manifest["kernels"] if k["op"] == "dispatch")
    signature = dispatch["signatures"]["sort"]
    assert [(name, dtype) for name, dtype, _ in signature] == [("Idx", "int64"), ("Off", "int64"), ("P", "int64")]
    experts = signature[1][2][0] - 1
    indices = torch.tensor([3, 0, 3, 1, 0, 3]) % experts
    sizes = {"R": len(indices)}
    offsets, order = (torch.empty([sizes.get(d, d) for d in dims], dtype=torch.int64) for _, _, dims in signature[1:])
    module = tvm.runtime.load_module(str(out / dispatch["artifacts"]["so"]))
    module["sort"](*[tvm.runtime.from_dlpack(t) for t in (indices, offsets, order)])
    counts = torch.bincount(indices, minlength=experts)
    assert offsets.tolist() == [0, *counts.cumsum(0).tolist()]
    assert order.tolist() == torch.sort(indices, stable=True).indices.tolist()
