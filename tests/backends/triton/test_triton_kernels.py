"""The Triton kernels on the CPU interpreter against the float64 reference (tiny shapes: the
interpreter is ~1000x slower than compiled code)."""

import pytest
import torch

from portable_moe.backends.base import BackendError
from portable_moe.backends.devices import cpu_device
from portable_moe.backends.triton import TritonBackend, launch
from portable_moe.backends.triton.tuning import CPU_CONFIG
from portable_moe.ir import DType, IRError
from portable_moe.ir import meanings as ref
from portable_moe.ir.meanings import run_graph
from portable_moe.models import build_moe_layer, init_params, preset

# fp32: a handful of ulps over short sums; fp16: one rounding of the output (2^-11) plus the
# reference's own fp16 roundings of intermediates (swiglu), relative to the output's scale.
TOL = {torch.float32: 1e-5, torch.float16: 4e-3}
DTYPES = (torch.float32, torch.float16)


def close(out, ref_out, dtype):
    scale = ref_out.abs().max().clamp_min(1e-6)
    err = (out.double() - ref_out.double()).abs().max() / scale
    assert err <= TOL[dtype], f"relative error {err:.2e} > {TOL[dtype]:.0e}"


def router_case(dtype, seed=0, T=9, E=16, H=24, **attrs):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).to(dtype)
    w = torch.randn(E, H, generator=g).to(dtype)
    sb = torch.randn(E, generator=g) * 0.1
    base = dict(top_k=4, scoring="softmax", num_groups=1, top_groups=1, group_score="max", normalize=True,
                scaling=1.0)
    base.update(attrs)
    return x, w, sb, base


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("attrs", [
    dict(), dict(scoring="sigmoid", num_groups=4, top_groups=2, group_score="top2_sum", scaling=2.5, bias=True),
    dict(scoring="softmax_topk", top_k=2), dict(normalize=False, num_groups=4, top_groups=3)])
def test_router_matches_reference(dtype, attrs):
    attrs = dict(attrs)
    use_bias = attrs.pop("bias", False)
    x, w, sb, a = router_case(dtype, **attrs)
    sb = sb if use_bias else None
    weights, idx, logits = launch.router(x, w, None, sb, **a)
    rw, ri, rl = ref.router(x.double(), w.double(), None, None if sb is None else sb.double(), **a)
    assert torch.equal(idx, ri)
    close(logits, rl, torch.float32)
    close(weights, rw, dtype)
    assert weights.dtype == dtype and idx.dtype == torch.int64 and logits.dtype == torch.float32


def test_router_ties_go_to_the_lower_index():
    x = torch.ones(3, 8)
    w = torch.zeros(6, 8)
    w[[1, 4, 5]] = 1.0          # experts 1, 4, 5 tie for the best score, the rest tie below them
    top = dict(top_k=4, scoring="softmax", num_groups=1, top_groups=1, group_score="max", normalize=True,
               scaling=1.0)
    _, idx, _ = launch.router(x, w, None, None, **top)
    assert idx.tolist() == [[1, 4, 5, 0]] * 3


@pytest.mark.parametrize("dtype", DTYPES)
def test_dispatch_is_a_stable_sort_with_offsets(dtype):
    E, T, K, H = 6, 11, 3, 20
    idx = torch.randint(0, E - 2, (T, K))      # experts 4 and 5 get no tokens
    idx[0] = torch.tensor([2, 2, 2])           # equal experts keep (t, k) order
    x = torch.randn(T, H).to(dtype)
    rows, offsets, order = launch.dispatch(x, idx, num_experts=E)
    r_rows, r_offsets, r_order = ref.dispatch(x, idx, num_experts=E)
    assert torch.equal(order, r_order) and torch.equal(offsets, r_offsets) and torch.equal(rows, r_rows)


def test_dispatch_of_no_tokens():
    rows, offsets, order = launch.dispatch(torch.zeros(0, 8), torch.zeros(0, 2, dtype=torch.int64), num_experts=4)
    assert rows.shape == (0, 8) and order.numel() == 0 and offsets.tolist() == [0] * 5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("swiglu", [False, True])
def test_grouped_matmul_over_uneven_segments(dtype, swiglu):
    E, N, K = 4, 24, 20
    counts = [5, 0, 19, 3]                       # an empty expert and segments that straddle tiles
    offsets = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()])
    x = torch.randn(sum(counts), K).to(dtype)
    w = (torch.randn(E, N, K) / K ** 0.5).to(dtype)
    y = launch.grouped_matmul(x, w, offsets, CPU_CONFIG, swiglu=swiglu)
    expect = ref.grouped_matmul(x, w, offsets)
    expect = ref.swiglu(expect) if swiglu else expect
    close(y, expect, dtype)
    if dtype == torch.float32:
        r64 = ref.grouped_matmul(x.double(), w.double(), offsets)
        close(y, ref.swiglu(r64) if swiglu else r64, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [32, 20])          # fp16 rows of 20: not 16-byte aligned, no descriptor
def test_fused_moe_ffn_matches_the_op_by_op_chain(dtype, H):
    """Gather in the gate_up GEMM, routing weight in the down GEMM's epilogue, combine as a sum; experts 1 and 5
    get no pair."""
    g = torch.Generator().manual_seed(4)
    T, K, F, E = 9, 3, 24, 6
    x = torch.randn(T, H, generator=g).to(dtype)
    idx = torch.tensor([0, 2, 3, 4][:K] * T).reshape(T, K).roll(1) % 5
    idx[idx == 1] = 0
    weights = torch.rand(T, K, generator=g).to(dtype)
    gate_up = (torch.randn(E, 2 * F, H, generator=g) / H ** 0.5).to(dtype)
    down = (torch.randn(E, H, F, generator=g) / F ** 0.5).to(dtype)
    assert launch.use_tma(gate_up, CPU_CONFIG) == (H * x.element_size() % 16 == 0)
    out = launch.moe_ffn(x, idx, weights, gate_up, down, CPU_CONFIG, CPU_CONFIG)
    rows, offsets, order = ref.dispatch(x.double(), idx, num_experts=E)
    h = ref.swiglu(ref.grouped_matmul(rows, gate_up.double(), offsets))
    close(out, ref.combine(ref.grouped_matmul(h, down.double(), offsets), order, weights.double()), dtype)


def test_moe_align_pads_each_expert_to_the_block_without_a_host_sync():
    experts = torch.tensor([3, 0, 3, 3, 1, 0, 3])
    slots, block_expert = launch.moe_align(experts, 5, 2)
    R = experts.numel()
    assert block_expert.tolist()[:5] == [0, 1, 3, 3, -1][:5] and (block_expert[4:] == -1).all()
    for b, e in enumerate(block_expert.tolist()):
        got = [r for r in slots[2 * b:2 * b + 2].tolist() if r < R]
        assert all(experts[r] == e for r in got) and (e == -1) == (not got)
    assert sorted(r for r in slots.tolist() if r < R) == list(range(R))


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_and_combine(dtype):
    h = torch.randn(10, 12).to(dtype)
    close(launch.swiglu(h), ref.swiglu(h), dtype)
    T, K, H = 5, 2, 12
    y, order = torch.randn(T * K, H).to(dtype), torch.randperm(T * K)
    weights = torch.rand(T, K).to(dtype)
    close(launch.combine(y, order, weights), ref.combine(y.double(), order, weights.double()), dtype)


def moe_graph(name, dtype):
    g = build_moe_layer(preset(name).with_(dtype=dtype, shared_ffn=0))
    return g, init_params(g, 0)


@pytest.mark.parametrize("name", ["debug", "debug-deepseek"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_moe_layer_matches_float64_reference(name, dtype):
    g, params = moe_graph(name, dtype)
    exe = TritonBackend().compile(g, cpu_device(), TritonBackend.Options())
    assert exe.fused and exe.chains, "gate_up + swiglu fused; the MoE chain runs as one fused FFN"
    x = torch.randn(13, g.inputs[0].type.shape[1]).to(getattr(torch, dtype))
    expect = run_graph(g, {"x": x.double()}, {k: v.double() for k, v in params.items()})[0]
    out = exe.run({"x": x}, params)[0]
    assert out.dtype == x.dtype and out.shape == x.shape
    close(out, expect, getattr(torch, dtype))
    with torch.enable_grad():          # wanting gradients runs op by op through the autograd Functions
        out = exe.run({"x": x.requires_grad_()}, params)[0]
    assert out.grad_fn is not None
    close(out.detach(), expect, getattr(torch, dtype))


def test_bfloat16_is_declined_on_cpu_with_the_reason():
    backend = TritonBackend()
    reason = backend.support(cpu_device()).reason("grouped_matmul", DType.bfloat16)
    assert reason and "bfloat16" in reason and "interpreter" in reason
    g, _ = moe_graph("debug", "bfloat16")
    with pytest.raises(BackendError, match="interpreter"):
        backend.compile(g, cpu_device(), backend.Options())


def test_float64_and_dense_ops_are_declined():
    backend = TritonBackend()
    support = backend.support(cpu_device())
    assert support.reason("router", DType.float64) and support.reason("attention", DType.float32)
    g, _ = moe_graph("debug", "float64")
    with pytest.raises(BackendError, match="float64"):
        backend.compile(g, cpu_device(), backend.Options())


def test_bad_expert_indices_and_offsets_are_refused_before_launch():
    from portable_moe.hf.experts import experts_graph
    from portable_moe.models import expert_ffn_graph

    E, H, F = 4, 16, 8
    g = experts_graph(E, H, F, 2, DType.float32)
    exe = TritonBackend().compile(g, cpu_device(), TritonBackend.Options())
    params = {"gate_up": torch.zeros(E, 2 * F, H), "down": torch.zeros(E, H, F)}
    inputs = {"x": torch.zeros(2, H), "indices": torch.tensor([[0, 9], [1, 2]]), "weights": torch.zeros(2, 2)}
    with pytest.raises(IRError, match="out of range"):
        exe.run(inputs, params)
    g = expert_ffn_graph(H, F, DType.float32, E)
    exe = TritonBackend().compile(g, cpu_device(), TritonBackend.Options())
    inputs = {"rows": torch.zeros(4, H), "offsets": torch.tensor([0, 3, 1, 4, 4]), **params}
    with pytest.raises(IRError, match="non-decreasing"):
        exe.run(inputs, {})


def test_router_nan_ranks_first_like_the_reference():
    x, w, _, a = router_case(torch.float32, T=4, E=8, H=8)
    w[5, 0] = float("nan")          # expert 5's logit is NaN for every token
    _, idx, _ = launch.router(x, w, None, None, **a)
    _, ri, _ = ref.router(x, w, None, None, **a)
    assert torch.equal(idx, ri) and idx.max() < 8


def test_tuned_configs_are_cached_per_variant_and_untuned_defaults_are_reported(tmp_path):
    from portable_moe.backends.triton.tuning import GemmConfig, TuningCache

    cache = TuningCache(tmp_path)
    cfg, note = cache.get("sm_90", "plain", "bfloat16", 4096, 7168, 3000)
    assert "untuned default" in note and cfg.block_m == 128
    cache.put("sm_90", "plain", "bfloat16", 4096, 7168, 3000, GemmConfig(64, 256, 64, 8, 4))
    again, note = TuningCache(tmp_path).get("sm_90", "plain", "bfloat16", 4096, 7168, 2500)   # same bucket, from disk
    assert note is None and again == GemmConfig(64, 256, 64, 8, 4)
    assert TuningCache(tmp_path).get("sm_90", "swiglu", "bfloat16", 4096, 7168, 3000)[1] is not None   # own key
    assert TuningCache(tmp_path).get("gfx942", "plain", "bfloat16", 4096, 7168, 3000)[1] is not None
    assert cache.get("sm_90", "plain", "bfloat16", 4096, 7168, 1)[0].block_m == 16       # decode: small M tiles
