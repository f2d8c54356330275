"""The GPU-style code path (thread binding, shared memory, barriers) executed on an OpenCL device (PoCL)."""

from __future__ import annotations

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
