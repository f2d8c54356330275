"""torch.ops.portable_moe.run: one opaque op for torch.compile (no graph breaks in the MoE block), with a
fake implementation and autograd that torch's own op checker accepts."""

from __future__ import annotations

import copy

import pytest
import torch
from hf_tiny import make_model
from torch._dynamo.utils import counters

import portable_moe
from portable_moe.hf import patch_hf
from portable_moe.hf.experts import experts_graph
from portable_moe.ir import DType


def experts_model(backend: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    graph = experts_graph(E=4, H=16, F=8, K=2, dtype=DType.float32)
    params = {"gate_up": torch.randn(4, 16, 16, generator=g) * 0.3, "down": torch.randn(4, 16, 8, generator=g) * 0.3}
    model = portable_moe.compile(graph, params, device="cpu", backend=backend)
    x = torch.randn(6, 16, generator=g)
    idx = torch.stack([torch.randperm(4, generator=g)[:2] for _ in range(6)])
    w = torch.rand(6, 2, generator=g)
    return model, [x, idx, w]


@pytest.mark.parametrize("backend", ["reference", "onnxruntime"])
def test_op_matches_direct_run_forward_and_backward(backend):
    model, inputs = experts_model(backend)
    params = list(model.named_graph_params().values())
    direct_in = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    op_in = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    direct = model.run_segments(direct_in, params)[0]
    via_op = torch.ops.portable_moe.run(model.op_handle, op_in, params)[0]
    torch.testing.assert_close(via_op, direct)
    grad = torch.randn_like(direct)
    want = torch.autograd.grad(direct, [direct_in[0], direct_in[2], *params], grad)
    got = torch.autograd.grad(via_op, [op_in[0], op_in[2], *params], grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_op_passes_torch_opcheck():
    model, inputs = experts_model("reference")
    params = [p.detach().requires_grad_() for p in model.named_graph_params().values()]
    inputs[0].requires_grad_()
    torch.library.opcheck(torch.ops.portable_moe.run.default, (model.op_handle, inputs, params))


@pytest.mark.parametrize("path", ["patch_hf", "experts_implementation"])
def test_compiled_transformers_model_has_no_graph_breaks(path):
    ref = make_model("mixtral")
    model = copy.deepcopy(ref)
    if path == "patch_hf":
        patch_hf(model)
    else:
        portable_moe.register_experts()
        model.set_experts_implementation("portable_moe")
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, eager = ref(ids).logits, model(ids).logits      # the eager call compiles our executables
        torch._dynamo.reset()
        counters.clear()
        got = torch.compile(model, fullgraph=True)(ids).logits
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch.testing.assert_close(eager, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graph capture)")
def test_cuda_graph_captures_the_op():
    model, inputs = experts_model("triton")
    gpu = portable_moe.compile(model.graph, {k: v.detach().cuda() for k, v in model.named_graph_params().items()},
                               device="cuda:0", backend="triton")
    inputs = [t.cuda() for t in inputs]
    params = list(gpu.named_graph_params().values())
    with torch.no_grad():
        want = gpu(*inputs)
        static_out = torch.ops.portable_moe.run(gpu.op_handle, inputs, params)      # warm-up
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = torch.ops.portable_moe.run(gpu.op_handle, inputs, params)
        graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out[0], want, rtol=2e-3, atol=2e-3)
