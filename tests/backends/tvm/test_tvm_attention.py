"""attention and cross_entropy on TVM (CPU and PoCL) against the float64 reference; the whole debug
model on TVM alone through the runtime, gradients included; the attention kernel lowered for CUDA."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch
from tvm_helpers import assert_matches, reference64

import portable_moe
from portable_moe.ir import DType, GraphBuilder, IRError, TensorType, verify
from portable_moe.models import build_model, init_params, preset

f32 = DType.float32


def attention_graph(N=4, KV=2, D=8, norm=True, **attrs):
    b = GraphBuilder("att")
    q = b.input("q", TensorType(f32, ("batch", "seq", N * D)))
    k, v = (b.input(n, TensorType(f32, ("batch", "seq", KV * D))) for n in ("k", "v"))
    qn, kn = (b.param(n, TensorType(f32, (D,))) if norm else None for n in ("qn", "kn"))
    return verify(b.finish(b.op1("attention", q, k, v, qn, kn, name="att", num_heads=N, num_kv_heads=KV,
                                 head_dim=D, **attrs)))


def ce_graph(V=50, ignore_index=-100):
    b = GraphBuilder("ce")
    logits = b.input("logits", TensorType(f32, ("batch", "seq", V)))
    targets = b.input("targets", TensorType(DType.int64, ("batch", "seq")))
    return verify(b.finish(b.op1("cross_entropy", logits, targets, name="ce", ignore_index=ignore_index)))


def attention_inputs(graph, B, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {v.name: torch.randn(B, S, v.type.shape[-1], generator=g) for v in graph.inputs}


def noisy_params(graph):
    return {k: v + 0.3 * torch.randn_like(v) for k, v in init_params(graph, 0).items()}


CASES = [
    {},                                                                     # GQA 2:1, qk norm, RoPE 1e4
    {"norm": False, "rope_theta": 0.0, "causal": False},                    # plain softmax attention
    {"N": 6, "KV": 1, "D": 16, "rope_theta": 500.0},                        # MQA, wider heads
]


@pytest.mark.parametrize("case", CASES)
def test_attention_matches_reference_for_every_shape(compile_cpu, case):
    graph = attention_graph(**case)
    params = noisy_params(graph)
    exe = compile_cpu(graph)                   # one compile: batch and seq are symbolic
    for B, S in ((1, 1), (2, 7), (3, 40), (0, 5)):
        x = attention_inputs(graph, B, S, seed=S)
        assert_matches(exe.run(x, params), reference64(graph, x, params), rtol=5e-5)


def test_causal_mask_hides_the_future(compile_cpu):
    graph = attention_graph(norm=False)
    exe = compile_cpu(graph)
    x = attention_inputs(graph, 1, 12)
    y = exe.run(x, {})[0]
    x["k"][:, 6:] += 100.0
    x["v"][:, 6:] = float("nan")
    y2 = exe.run(x, {})[0]
    assert torch.equal(y[:, :6], y2[:, :6]) and y2[:, 6:].isnan().all()


def test_cross_entropy_matches_reference_and_ignores(compile_cpu):
    graph = ce_graph(ignore_index=3)
    exe = compile_cpu(graph)
    for B, S in ((1, 1), (4, 33)):
        targets = torch.randint(0, 50, (B, S))
        targets[0, 0] = 3
        x = {"logits": 4 * torch.randn(B, S, 50), "targets": targets}
        got = exe.run(x, {})
        assert got[0].shape == () and got[0].dtype == torch.float32
        if B * S == 1:                        # every target ignored: 0/0, as torch
            assert got[0].isnan() and reference64(graph, x, {})[0].isnan()
        else:
            assert_matches(got, reference64(graph, x, {}))
    with pytest.raises(IRError, match=r"targets out of range \[0, 50\): input .targets. holds 50"):
        exe.run({"logits": torch.randn(2, 2, 50), "targets": torch.tensor([[1, 50], [3, 2]])}, {})


def test_attention_and_cross_entropy_on_opencl(backend, cache_dir):
    devices = backend.devices()
    if not devices:
        pytest.skip("no OpenCL platform (install pocl-opencl-icd)")
    options = backend.Options(cache_dir=str(cache_dir))
    graph = attention_graph()
    params = noisy_params(graph)
    exe = backend.compile(graph, devices[0], options)
    for B, S in ((1, 1), (2, 70)):                          # 70 positions: two blocks of 64 threads
        x = attention_inputs(graph, B, S)
        assert_matches(exe.run(x, params), reference64(graph, x, params), rtol=5e-5)
    ce = ce_graph()
    x = {"logits": torch.randn(3, 5, 50), "targets": torch.randint(0, 50, (3, 5))}
    assert_matches(backend.compile(ce, devices[0], options).run(x, {}), reference64(ce, x, {}))


@pytest.mark.slow
def test_debug_model_runs_on_tvm_alone_with_gradients(cache_dir):
    cfg = preset("debug")
    graph = build_model(cfg, with_loss=True)
    params = init_params(graph, 0)
    ids, targets = (torch.randint(0, cfg.vocab_size, (2, 9)) for _ in range(2))
    grads = {}
    for name, options in (("tvm", {"cache_dir": str(cache_dir)}), ("reference", None)):
        model = portable_moe.compile(graph, {k: v.clone() for k, v in params.items()}, "cpu", backend=name,
                                     options=options)
        assert set(model.placement().values()) == {name}
        logits, loss = model(ids, targets)
        if name == "tvm":
            want = reference64(graph, {"ids": ids, "targets": targets}, params)
            assert_matches([logits.detach(), loss.detach()], want, rtol=1e-5)
        loss.backward()
        grads[name] = dict(model.named_parameters())
    assert len(grads["tvm"]) > 10 and any("attn" in n for n in grads["tvm"])
    for n, p in grads["tvm"].items():
        torch.testing.assert_close(p.grad, grads["reference"][n].grad, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_attention_lowers_for_cuda_with_bound_threads(backend, tmp_path):
    manifest = backend.lower(attention_graph(), "cuda:sm_90", tmp_path, backend.Options())
    (kernel,) = manifest["kernels"]
    assert kernel["op"] == "attention" and manifest["not_lowered"] == []
    source = (tmp_path / kernel["artifacts"]["source"]).read_text()
    for name in ("prep_q_kernel", "prep_k_kernel", "attend_kernel", "blockIdx.y", "threadIdx.x"):
        assert name in source
    ptxas = shutil.which("ptxas")
    if ptxas:
        proc = subprocess.run([ptxas, "-arch=sm_90", str(tmp_path / kernel["artifacts"]["ptx"]), "-o",
                               str(tmp_path / "x.o")], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
