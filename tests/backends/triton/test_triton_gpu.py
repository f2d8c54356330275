"""The GPU tier: the compiled Triton kernels on a CUDA GPU (not the interpreter) against the float64
reference, every op x dtype, the fused MoE FFN, whole models through portable_moe.compile, and tuning with
the device's real limits. Skipped, with the reason, on a machine without a CUDA GPU; run by `nox -s gpu`.

Tolerances, relative to the largest reference entry: float32 1e-4 (3xTF32 dots, ~1e-6 measured on the
CPU's fp32), float16 4e-3 (one rounding of the output, 2^-11, plus the reference's own fp16 roundings of
intermediates), bfloat16 3e-2 (the same in bfloat16, 2^-8 per rounding, a few roundings deep)."""

import pytest
import torch

from portable_moe.ir import meanings as ref
from portable_moe.ir.meanings import run_graph
from portable_moe.models import build_model, build_moe_layer, init_params, preset
from portable_moe.runtime.tolerance import global_error

CUDA = torch.cuda.is_available() and torch.version.hip is None
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine (torch.cuda."
                                                  "is_available() is False): the gpu tier runs the compiled kernels")]
TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}
DTYPES = tuple(TOL)
DEV = "cuda:0"


def close(got, want, dtype, what=""):
    assert got.dtype == dtype and got.shape == want.shape, what
    err = ((got.double().cpu() - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e} > {TOL[dtype]:.0e}"


def gpu_config(x, w, variant):
    from portable_moe.backends.triton.tuning import TuningCache, limits_for

    arch = "sm_{}{}".format(*torch.cuda.get_device_capability(0))
    cfg, _ = TuningCache(None).get(arch, variant, str(x.dtype)[6:], w.shape[1], w.shape[2],
                                   x.shape[0] // w.shape[0] + 1, limits_for(arch, DEV), x.element_size())
    return cfg


def test_gpu_launches_compiled_kernels_not_the_interpreter(monkeypatch):
    from portable_moe.backends.triton import launch

    def interpret(*args, **kwargs):
        raise AssertionError("a GPU tensor went to the interpreter")

    monkeypatch.setattr(launch, "interpret", interpret)
    h = torch.randn(8, 32, device=DEV)
    assert torch.allclose(launch.swiglu(h).cpu(), ref.swiglu(h.cpu().double()).float(), atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_router_dispatch_swiglu_combine(dtype):
    from portable_moe.backends.triton import launch

    g = torch.Generator().manual_seed(0)
    T, E, H, K = 300, 64, 256, 6
    x, w = torch.randn(T, H, generator=g).to(dtype), torch.randn(E, H, generator=g).to(dtype) / H ** 0.5
    attrs = dict(top_k=K, scoring="sigmoid", num_groups=8, top_groups=4, group_score="top2_sum", normalize=True,
                 scaling=2.5)
    weights, idx, logits = launch.router(x.to(DEV), w.to(DEV), None, None, **attrs)
    rw, ri, rl = ref.router(x.double(), w.double(), None, None, **attrs)
    assert (idx.cpu() == ri).float().mean() > 0.99          # near-ties may round differently in low precision
    close(logits, rl, torch.float32, "router logits")
    rows, offsets, order = launch.dispatch(x.to(DEV), ri.to(DEV), num_experts=E)
    r_rows, r_offsets, r_order = ref.dispatch(x.double(), ri, num_experts=E)
    assert torch.equal(offsets.cpu(), r_offsets) and torch.equal(order.cpu(), r_order)
    close(rows, r_rows, dtype, "dispatch rows")
    h = torch.randn(T * K, 2 * H, generator=g).to(dtype)
    close(launch.swiglu(h.to(DEV)), ref.swiglu(h.double()), dtype, "swiglu")
    y = torch.randn(T * K, H, generator=g).to(dtype)
    close(launch.combine(y.to(DEV), order, rw.to(dtype).to(DEV)), ref.combine(y.double(), r_order, rw), dtype,
          "combine")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 37, 2000])
def test_grouped_gemm_and_fused_moe_ffn(dtype, tokens):
    from portable_moe.backends.triton import launch

    g = torch.Generator().manual_seed(tokens)
    E, K, H, F = 16, 4, 512, 384
    x = torch.randn(tokens, H, generator=g).to(dtype)
    idx = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(tokens)])
    wts = torch.rand(tokens, K, generator=g).to(dtype)
    gate_up = (torch.randn(E, 2 * F, H, generator=g) / H ** 0.5).to(dtype)
    down = (torch.randn(E, H, F, generator=g) / F ** 0.5).to(dtype)
    rows, offsets, order = ref.dispatch(x.double(), idx, num_experts=E)
    h64 = ref.swiglu(ref.grouped_matmul(rows, gate_up.double(), offsets))
    want = ref.combine(ref.grouped_matmul(h64, down.double(), offsets), order, wts.double())
    gu, dn, rows = gate_up.to(DEV), down.to(DEV), rows.to(dtype).to(DEV)
    h = launch.grouped_matmul(rows, gu, offsets.to(DEV), gpu_config(rows, gu, "swiglu"), swiglu=True)
    close(h, h64, dtype, "grouped gate_up + swiglu")
    out = launch.moe_ffn(x.to(DEV), idx.to(DEV), wts.to(DEV), gu, dn, gpu_config(rows, gu, "swiglu+gather"),
                         gpu_config(rows, dn, "plain"))
    close(out, want, dtype, "fused MoE FFN")


@pytest.mark.parametrize("name", ["debug", "debug-deepseek"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_whole_models_on_the_gpu(name, dtype):
    import portable_moe

    cfg = preset(name).with_(dtype=dtype)
    graph = build_model(cfg)
    params = init_params(graph, seed=0)
    model = portable_moe.compile(graph, params, device="cuda", backend="triton")
    assert model.selection.device.id == "cuda:0"
    assert any(b == "triton" for b in model.placement().values())
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(ids)
    want, = run_graph(graph, {"ids": ids}, {k: v.double() for k, v in params.items()})
    assert global_error(got.cpu(), want) < {"float32": 1e-6, "float16": 1e-4, "bfloat16": 1e-3}[dtype]


def test_one_layer_trains_a_step_on_the_gpu():
    """Forward and backward through the Triton kernels on the GPU, gradients against float64."""
    import portable_moe

    graph = build_moe_layer(preset("debug").with_(shared_ffn=0))
    params = init_params(graph, seed=0)
    model = portable_moe.compile(graph, params, device="cuda:0", backend="triton")
    x = torch.randn(40, graph.inputs[0].type.shape[1], generator=torch.Generator().manual_seed(2))
    xg = x.to(DEV).requires_grad_()
    model(xg).square().sum().backward()
    x64 = x.double().requires_grad_()
    out, = run_graph(graph, {"x": x64}, {k: v.double() for k, v in params.items()})
    out.square().sum().backward()
    close(xg.grad, x64.grad, torch.float32, "dx")


def test_autotune_on_the_device_keeps_what_fits(tmp_path):
    from portable_moe.backends.triton import launch, tuning

    arch = "sm_{}{}".format(*torch.cuda.get_device_capability(0))
    limits = tuning.limits_for(arch, DEV)
    x = torch.randn(512, 1024, device=DEV, dtype=torch.bfloat16)
    idx = torch.randint(0, 8, (256, 2), device=DEV)
    w = torch.randn(8, 2 * 1024, 1024, device=DEV, dtype=torch.bfloat16) * 0.02
    slots, blocks = {}, {}

    def run(cfg):
        if cfg.block_m not in slots:
            slots[cfg.block_m], blocks[cfg.block_m] = launch.moe_align(idx.reshape(-1), 8, cfg.block_m)
        y = torch.empty(512, 1024, device=DEV, dtype=torch.bfloat16)
        return launch.moe_gemm(x[:256], w, y, slots[cfg.block_m], blocks[cfg.block_m], cfg, a_div=2, swiglu=True)

    cache = tuning.TuningCache(tmp_path)
    best = tuning.autotune(cache, arch, "swiglu+gather", "bfloat16", 2048, 1024, 64, run, limits)
    assert best is not None and tuning.fits(best, "swiglu+gather", 2, limits)
    assert tuning.TuningCache(tmp_path).get(arch, "swiglu+gather", "bfloat16", 2048, 1024, 64, limits) == (best, None)
