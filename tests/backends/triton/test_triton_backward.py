"""Backward kernels on the CPU interpreter against float64 autograd through the reference ops (tiny
shapes: the interpreter is ~1000x slower than compiled code).

Tolerances, as error relative to each gradient's largest entry: float32 1e-4 (sums here are < 100
terms of float32 products, measured ~2e-7); float16 5e-3: every tensor passing between kernels is
rounded to float16 (2^-11 = 4.9e-4 per rounding) and a gradient goes through ~5 of them (measured
≤ 1.2e-3 on the debug layer)."""

import pytest
import torch

import portable_moe
from portable_moe.backends.triton import autograd as fn
from portable_moe.backends.triton.tuning import CPU_CONFIG
from portable_moe.ir import meanings as ref
from portable_moe.models import build_moe_layer, init_params, preset
from portable_moe.runtime import module as runtime_module

TOL = {torch.float32: 1e-4, torch.float16: 5e-3}


def close(got, want, dtype, what=""):
    assert got is not None and got.shape == want.shape and got.dtype == dtype, what
    scale = want.abs().max().clamp_min(1e-12)
    err = ((got.double() - want).abs().max() / scale).item()
    assert err <= TOL[dtype], f"d/d{what}: relative error {err:.2e} > {TOL[dtype]:.0e}"


def leaves(*tensors, dtype):
    return [t.to(dtype).requires_grad_() for t in tensors], [t.to(dtype).double().requires_grad_() for t in tensors]


def grads(out, wrt, cot):
    return torch.autograd.grad(out, wrt, cot.to(out.dtype), allow_unused=True)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16))
@pytest.mark.parametrize("swiglu", (False, True))
def test_grouped_matmul_backward(dtype, swiglu):
    g = torch.Generator().manual_seed(1)
    R, E, N, K = 37, 5, 40, 24          # not multiples of the 16-wide tiles; expert 2 gets no rows
    offsets = torch.tensor([0, 9, 20, 20, 31, R])
    (x, w), (x64, w64) = leaves(torch.randn(R, K, generator=g), torch.randn(E, N, K, generator=g) * 0.2, dtype=dtype)
    y = fn.GroupedMatmulFn.apply(x, w, offsets, CPU_CONFIG, swiglu)
    y64 = ref.grouped_matmul(x64, w64, offsets)
    y64 = ref.swiglu(y64) if swiglu else y64
    cot = torch.randn(y64.shape, generator=g, dtype=torch.float64)
    got = grads(y, [x, w], cot)
    for name, gt, want in zip("xw", got, grads(y64, [x64, w64], cot)):
        close(gt, want, dtype, name)
    assert not got[1][2].any()          # the expert without rows gets a zero gradient


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16))
def test_combine_dispatch_and_swiglu_backward(dtype):
    g = torch.Generator().manual_seed(2)
    T, K, H, E = 7, 3, 20, 4
    idx = torch.randint(0, E, (T, K), generator=g)
    (x, wts, h), (x64, wts64, h64) = leaves(torch.randn(T, H, generator=g), torch.rand(T, K, generator=g),
                                            torch.randn(T * K, 2 * H, generator=g), dtype=dtype)
    rows, _, order = fn.DispatchFn.apply(x, idx, E)
    out = fn.CombineFn.apply(fn.SwigluFn.apply(h) * rows, order, wts)
    rows64, _, order64 = ref.dispatch(x64, idx, num_experts=E)
    out64 = ref.combine(ref.swiglu(h64) * rows64, order64, wts64)
    cot = torch.randn(out64.shape, generator=g, dtype=torch.float64)
    for name, got, want in zip(("x", "routing weights", "gate_up"), grads(out, [x, wts, h], cot),
                               grads(out64, [x64, wts64, h64], cot)):
        close(got, want, dtype, name)


@pytest.mark.parametrize("attrs", [
    dict(scoring="softmax", num_groups=1, top_groups=1, normalize=True, scaling=1.0),
    dict(scoring="sigmoid", num_groups=4, top_groups=2, normalize=True, scaling=2.5),
    dict(scoring="softmax_topk", num_groups=1, top_groups=1, normalize=False, scaling=1.0)])
def test_router_backward(attrs):
    g = torch.Generator().manual_seed(3)
    T, E, H = 6, 8, 16
    a = dict(top_k=2, group_score="top2_sum" if attrs["num_groups"] > 1 else "max", **attrs)
    (x, w, b), (x64, w64, b64) = leaves(torch.randn(T, H, generator=g), torch.randn(E, H, generator=g),
                                        torch.randn(E, generator=g) * 0.1, dtype=torch.float32)
    wts, idx, logits = fn.RouterFn.apply(x, w, b, None, a)
    wts64, idx64, logits64 = ref.router(x64, w64, b64, None, **a)
    assert torch.equal(idx, idx64)
    cw, cl = torch.randn(wts.shape, generator=g), torch.randn(logits.shape, generator=g)
    got = torch.autograd.grad((wts, logits), (x, w, b), (cw, cl))
    want = torch.autograd.grad((wts64, logits64), (x64, w64, b64), (cw.double(), cl.double()))
    for name, gt, wt in zip(("x", "weight", "bias"), got, want):
        close(gt, wt, torch.float32, name)


def forbid_reference_fallback(monkeypatch) -> dict:
    """The runtime's fallback re-runs the reference graph: make that an error, and count dW launches."""
    def fallback(*args, **kwargs):
        raise AssertionError("the runtime fell back to the reference backward")

    calls = {"dw": 0}
    real_dw = fn.grouped_matmul_dw

    def counting_dw(*args, **kwargs):
        calls["dw"] += 1
        return real_dw(*args, **kwargs)

    monkeypatch.setattr(runtime_module, "run_graph", fallback)
    monkeypatch.setattr(fn, "grouped_matmul_dw", counting_dw)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("name,dtype", [("debug", "float32"), ("debug", "float16"), ("debug-deepseek", "float32")])
def test_layer_gradients_through_compile_match_float64_reference(name, dtype, monkeypatch):
    graph = build_moe_layer(preset(name).with_(dtype=dtype, shared_ffn=0))
    # larger expert weights than init's 0.02 so the routing-weight path carries a visible gradient
    params = {k: v * 10 if v.dim() == 3 else v for k, v in init_params(graph, 0).items()}
    model = portable_moe.compile(graph, params, device="cpu", backend="triton")
    assert [seg.backend for seg, _ in model.segments] == ["triton"] and model.segments[0][1].differentiable
    calls = forbid_reference_fallback(monkeypatch)
    td = getattr(torch, dtype)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(13, graph.inputs[0].type.shape[1], generator=g).to(td).requires_grad_()
    out = model(x)
    cot = torch.randn(out.shape, generator=g, dtype=torch.float64)
    named = {"x": x, **model.named_graph_params()}
    wanted = [n for n in named if n == "x" or named[n].requires_grad and "score_bias" not in n]
    got = torch.autograd.grad(out, [named[n] for n in wanted], cot.to(td))
    assert calls["dw"] == 2                       # gate_up (fused SwiGLU) and down
    monkeypatch.undo()
    x64 = x.detach().double().requires_grad_()
    p64 = {k: v.detach().double().requires_grad_() for k, v in params.items()}
    out64 = ref_layer(graph, x64, p64)
    want = torch.autograd.grad(out64, [x64 if n == "x" else p64[n] for n in wanted], cot)
    assert set(wanted) >= {"x", "router.weight", "experts.gate_up", "experts.down"}
    for n, gt, wt in zip(wanted, got, want):
        close(gt, wt, td, n)


def ref_layer(graph, x64, p64):
    from portable_moe.ir.meanings import run_graph

    return run_graph(graph, {"x": x64}, p64)[0]
