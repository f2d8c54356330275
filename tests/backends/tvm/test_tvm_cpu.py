"""TVM backend on the CPU: every lowered op and whole MoE layers against the float64 reference."""

from __future__ import annotations

import pytest
import torch
from tvm_helpers import assert_matches, reference64

from portable_moe.backends.base import BackendError
from portable_moe.backends.devices import cpu_device
from portable_moe.ir import DType, GraphBuilder, IRError, TensorType, verify
from portable_moe.models import build_moe_layer, init_params, preset

f32 = DType.float32


def moe_graph(E=8, K=2, H=24, F=20, **router):
    b = GraphBuilder("moe")
    x = b.input("x", TensorType(f32, ("tokens", H)))
    w, idx, logits = b.op("router", x, b.param("rw", TensorType(f32, (E, H))), None,
                          b.param("sb", TensorType(f32, (E,))) if router.pop("score_bias", False) else None,
                          name="router", top_k=K, **router)
    rows, offsets, order = b.op("dispatch", x, idx, name="dispatch", num_experts=E)
    h = b.op1("grouped_matmul", rows, b.param("gu", TensorType(f32, (E, 2 * F, H))), offsets, name="gate_up")
    h = b.op1("swiglu", h, name="swiglu")
    y = b.op1("grouped_matmul", h, b.param("dw", TensorType(f32, (E, H, F))), offsets, name="down")
    return verify(b.finish(b.op1("combine", y, order, w, name="combine"), w, idx, logits, offsets, order))


@pytest.mark.parametrize("router", [
    {"scoring": "softmax"},
    {"scoring": "sigmoid", "num_groups": 4, "top_groups": 2, "group_score": "top2_sum", "scaling": 2.5,
     "score_bias": True},
    {"scoring": "softmax_topk", "normalize": False},
    {"scoring": "softmax", "num_groups": 2, "top_groups": 1, "group_score": "max", "normalize": False},
])
def test_moe_ops_match_reference(compile_cpu, router):
    graph = moe_graph(**router)
    params = init_params(graph, 1)
    exe = compile_cpu(graph)
    for tokens in (1, 7, 64):
        x = {"x": torch.randn(tokens, 24)}
        assert_matches(exe.run(x, params), reference64(graph, x, params))


def test_router_ties_go_to_lower_index_and_skewed_routing(compile_cpu):
    graph = moe_graph()
    params = init_params(graph, 2)
    params["rw"] = torch.zeros_like(params["rw"])          # every logit equal: experts 0 and 1 everywhere
    exe = compile_cpu(graph)
    x = {"x": torch.randn(33, 24)}
    got = exe.run(x, params)
    assert got[2].unique().tolist() == [0, 1]
    assert got[4].tolist() == [0, 33, 66, 66, 66, 66, 66, 66, 66]   # experts 2..7 get no tokens
    assert_matches(got, reference64(graph, x, params))


def test_one_compile_serves_every_token_count(compile_cpu):
    from portable_moe.backends import cache

    graph = moe_graph()
    params = init_params(graph, 3)
    exe = compile_cpu(graph)
    before = dict(cache.STATS)
    for tokens in (0, 1, 5, 130):
        out = exe.run({"x": torch.randn(tokens, 24)}, params)
        assert out[0].shape == (tokens, 24)
    assert dict(cache.STATS) == before


def test_moe_layer_presets(compile_cpu):
    for name in ("debug", "debug-deepseek"):
        graph = build_moe_layer(preset(name))
        params = init_params(graph, 0)
        exe = compile_cpu(graph)
        x = {"x": torch.randn(50, preset(name).hidden)}
        assert_matches(exe.run(x, params), reference64(graph, x, params))
        assert "grouped_matmul+swiglu" in exe.placement()["gate_up"]


def dense_graph():
    b = GraphBuilder("dense")
    ids = b.input("ids", TensorType(DType.int64, ("batch", "seq")))
    h = b.op1("embedding", ids, b.param("emb", TensorType(f32, (50, 16))))
    n = b.op1("rms_norm", h, b.param("nw", TensorType(f32, (16,))), eps=1e-5)
    y = b.op1("linear", n, b.param("w", TensorType(f32, (24, 16))), b.param("bias", TensorType(f32, (24,))))
    g = b.op1("gelu", y, approximate="tanh")
    g2 = b.op1("gelu", y)
    s = b.op1("mul", b.op1("silu", g), b.op1("sigmoid", g2))
    a = b.op1("add", s, b.param("row", TensorType(f32, (24,))))
    return verify(b.finish(b.op1("softmax", a, axis=-1), b.op1("swiglu", a)))


def test_dense_ops_match_reference(compile_cpu):
    graph = dense_graph()
    params = init_params(graph, 4)
    exe = compile_cpu(graph)
    for batch, seq in ((1, 1), (3, 5)):
        x = {"ids": torch.randint(0, 50, (batch, seq))}
        assert_matches(exe.run(x, params), reference64(graph, x, params))


def test_reductions_to_one_value_compile(compile_cpu):
    b = GraphBuilder("vector")
    x = b.input("x", TensorType(f32, (16,)))
    n = b.op1("rms_norm", x, b.param("w", TensorType(f32, (16,))), eps=1e-5)
    graph = verify(b.finish(b.op1("softmax", n, axis=-1)))
    params = init_params(graph, 8)
    x = {"x": torch.randn(16)}
    assert_matches(compile_cpu(graph).run(x, params), reference64(graph, x, params))


def test_bad_inputs_raise_clear_errors(compile_cpu):
    graph = moe_graph()
    params = init_params(graph, 5)
    exe = compile_cpu(graph)
    step = next(s for s in exe.steps if s.op == "grouped_matmul")
    call = exe.calls[exe.steps.index(step)]
    with pytest.raises(IRError, match="offsets"):
        step.run(call, torch.randn(4, 24), params["gu"], torch.tensor([0, 1, 9, 9, 9, 9, 9, 9, 4]))
    dispatch = next(i for i, s in enumerate(exe.steps) if s.op == "dispatch")
    with pytest.raises(IRError, match="expert index out of range"):
        exe.steps[dispatch].run(exe.calls[dispatch], torch.randn(2, 24), torch.tensor([[0, 8], [1, 2]]))
    emb = dense_graph()
    exe2 = compile_cpu(emb)
    with pytest.raises(IRError, match="ids out of range"):
        exe2.run({"ids": torch.tensor([[50]])}, init_params(emb, 0))


def test_support_is_declared_as_data(backend, compile_cpu):
    support = backend.support(cpu_device())
    assert support.reason("grouped_matmul", f32) is None
    assert "float32" in support.reason("grouped_matmul", DType.float16)
    assert support.reason("attention", f32) is None and support.reason("cross_entropy", f32) is None
    assert "oracle" in support.reason("attention", DType.float64)
    assert compile_cpu(moe_graph()).differentiable is False      # gradients: the reference recomputes them
    graph = build_moe_layer(preset("debug").with_(dtype="bfloat16"))
    with pytest.raises(BackendError, match="bf16|bfloat16"):
        backend.compile(graph, cpu_device(), backend.Options())


def test_debug_layer_says_where_its_tiles_came_from(compile_cpu):
    exe = compile_cpu(build_moe_layer(preset("debug")))
    assert "(register model tile)" in exe.placement()["gate_up"]        # too small to tune
    assert any(n.startswith("gate_up: tile ") and "register model" in n for n in exe.notes)


def test_training_through_the_runtime_matches_reference_gradients(cache_dir):
    import portable_moe

    cfg = preset("debug")
    graph = build_moe_layer(cfg)
    params = init_params(graph, 6)
    x = torch.randn(40, cfg.hidden)
    grads = {}
    for name, options in (("tvm", {"cache_dir": str(cache_dir)}), ("reference", None)):
        model = portable_moe.compile(graph, {k: v.clone() for k, v in params.items()}, "cpu", backend=name,
                                     options=options)
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        (out[0] if isinstance(out, list | tuple) else out).square().sum().backward()
        grads[name] = [xi.grad] + [p.grad for _, p in sorted(model.named_parameters())]
    assert len(grads["tvm"]) > 3
    for g_tvm, g_ref in zip(grads["tvm"], grads["reference"], strict=True):
        torch.testing.assert_close(g_tvm, g_ref, rtol=1e-4, atol=1e-6)


def test_weights_changed_between_calls_are_never_stale(compile_cpu):
    """A fresh tensor at the address of an earlier one (version 0 both, as a new torch.stack each
    training step gives) and an in-place update must both compute with the new values."""
    import numpy as np

    graph = moe_graph()
    params = init_params(graph, 7)
    exe = compile_cpu(graph)
    x = {"x": torch.randn(40, 24)}
    memory = {k: params[k].numpy().copy() for k in ("gu", "dw")}
    first = {**params, **{k: torch.from_numpy(m) for k, m in memory.items()}}
    assert_matches(exe.run(x, first), reference64(graph, x, first))
    for m in memory.values():
        np.copyto(m, -2 * m[::-1])               # new values, written where torch does not see them
    second = {**params, **{k: torch.from_numpy(m) for k, m in memory.items()}}
    assert all(second[k].data_ptr() == first[k].data_ptr() and second[k]._version == 0 for k in memory)
    assert_matches(exe.run(x, second), reference64(graph, x, second))
    second["gu"].mul_(0.5)                       # in place: the version moves
    assert_matches(exe.run(x, second), reference64(graph, x, second))
    del first
    assert len(exe.packed.entries) == 3          # router, gate_up, down: the first tensors' copies died with them
