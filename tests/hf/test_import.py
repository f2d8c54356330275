"""from_hf against transformers' own forward: whole-model logits, each MoE block's output, and the experts picked."""

from __future__ import annotations

import copy

import pytest
import torch
from hf_tiny import FAMILIES, make_model

import portable_moe
from portable_moe.hf import HFImportError, from_hf
from portable_moe.ir.meanings import run_graph
from portable_moe.runtime.tolerance import TOLERANCES, excess


def hf_block_and_picks(model, layer: int, x_TH: torch.Tensor):
    picks = {}
    block = model.model.layers[layer].mlp
    hook = block.gate.register_forward_hook(lambda m, i, o: picks.__setitem__("idx", o[2]))
    try:
        with torch.no_grad():
            y = block(x_TH[None])[0]
    finally:
        hook.remove()
    return y, picks["idx"]


def our_block_and_picks(imp, x_TH: torch.Tensor):
    env: dict = {}
    with torch.no_grad():
        y = portable_moe.compile(imp.graph, imp.params, backend="reference")(x_TH)
        run_graph(imp.graph, {"x": x_TH}, dict(imp.params), env)
    return y, env["router.indices"]


@pytest.mark.parametrize("family", FAMILIES)
def test_block_matches_transformers_and_picks_same_experts(family, models):
    model = models(family)
    for layer in range(model.config.num_hidden_layers):
        try:
            imp = from_hf(model, layer=layer)
        except HFImportError as e:
            assert "has no MoE block" in str(e)
            continue
        x_TH = torch.randn(9, model.config.hidden_size, generator=torch.Generator().manual_seed(layer))
        want, want_idx = hf_block_and_picks(model, layer, x_TH)
        got, got_idx = our_block_and_picks(imp, x_TH)
        worst, _ = excess(got, want, TOLERANCES[torch.float32])
        assert worst <= 1, f"{family} layer {layer}: {worst}x the float32 tolerance"
        # DeepSeek-V3 picks with topk(sorted=False): compare the sets per token
        assert torch.equal(got_idx.sort(-1).values, want_idx.sort(-1).values)
        if family != "deepseek_v3":
            assert torch.equal(got_idx, want_idx)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "deepseek_v3"])
def test_whole_model_logits_match(family, models):
    model = models(family)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(3))
    imp = from_hf(model)
    with torch.no_grad():
        want = model(ids).logits
        got = portable_moe.compile(imp.graph, imp.params, backend="reference")(ids)
    worst, _ = excess(got, want, TOLERANCES[torch.float32])
    assert worst <= 1, f"{family}: logits off by {worst}x the float32 tolerance"


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_float64_tight(family):
    model = make_model(family).to(torch.float64)
    model.set_experts_implementation("eager")      # the default grouped_mm has no float64 kernel
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(4))
    imp = from_hf(model)
    assert imp.graph.params[0].type.dtype.value == "float64"
    with torch.no_grad():
        want = model(ids).logits
        got = portable_moe.compile(imp.graph, imp.params, backend="reference")(ids)
    # transformers' router softmax runs in float32 even for float64 models; that bounds the agreement
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_block(dtype, models):
    model = copy.deepcopy(models("qwen3_moe")).to(dtype)
    imp = from_hf(model, block_only=True)
    assert imp.config.dtype == str(dtype).removeprefix("torch.")
    x_TH = torch.randn(6, 32, generator=torch.Generator().manual_seed(5)).to(dtype)
    want, want_idx = hf_block_and_picks(model, imp.layer, x_TH)
    got, got_idx = our_block_and_picks(imp, x_TH)
    assert got.dtype == dtype
    scale = float(want.abs().max())
    assert float((got.float() - want.float()).abs().max()) <= 2e-2 * scale
    assert torch.equal(got_idx, want_idx)


def test_deepseek_whole_model_refused_naming_mla(models):
    with pytest.raises(HFImportError, match="MLA"):
        from_hf(models("deepseek_v3"))


def test_params_are_the_transformers_tensors(models):
    model = models("mixtral")
    imp = from_hf(model, block_only=True)
    assert imp.names["experts.gate_up"] == "model.layers.0.mlp.experts.gate_up_proj"
    assert imp.params["experts.gate_up"].data_ptr() == model.model.layers[0].mlp.experts.gate_up_proj.data_ptr()
