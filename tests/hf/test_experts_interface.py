"""experts_implementation="portable_moe": a local checkpoint of every family loads with it and matches
transformers' own eager experts; training reaches transformers' Parameters; what we cannot run is refused."""

from __future__ import annotations

import copy

import pytest
import torch
from hf_tiny import FAMILIES, make_model

import portable_moe
from portable_moe.hf import HFImportError, patch_hf
from portable_moe.hf.experts import why


@pytest.fixture(scope="module", autouse=True)
def registered():
    portable_moe.register_experts()


def ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(seed))


def moe_experts(model) -> list[torch.nn.Module]:
    return [m for n, m in model.named_modules() if n.endswith("mlp.experts")]


@pytest.mark.parametrize("family", FAMILIES)
def test_from_pretrained_matches_eager_and_patch_hf(family, tmp_path):
    import transformers as tf

    make_model(family).save_pretrained(tmp_path)
    ours = tf.AutoModelForCausalLM.from_pretrained(tmp_path, experts_implementation="portable_moe").eval()
    eager = tf.AutoModelForCausalLM.from_pretrained(tmp_path, experts_implementation="eager").eval()
    assert ours.config._experts_implementation == "portable_moe"
    patched = copy.deepcopy(eager)
    patch_hf(patched)
    with torch.no_grad():
        want, got, via_patch = eager(ids()).logits, ours(ids()).logits, patched(ids()).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, via_patch, rtol=1e-5, atol=1e-5)
    used = [text for e in moe_experts(ours) for text in why(e)]
    assert used and all("backend for cpu" in text for text in used), "no MoE layer ran on our executables"


def test_backend_follows_the_environment(monkeypatch, models):
    monkeypatch.setenv("PORTABLE_MOE_BACKEND", "reference")
    model = copy.deepcopy(models("mixtral"))
    model.set_experts_implementation("portable_moe")
    with torch.no_grad():
        model(ids())
    whys = [text for e in moe_experts(model) for text in why(e)]
    assert whys and all("reference" in text.splitlines()[0] for text in whys)


def test_training_updates_transformers_parameters(models):
    eager = copy.deepcopy(models("qwen3_moe")).train()
    ours = copy.deepcopy(eager)
    eager.set_experts_implementation("eager")
    ours.set_experts_implementation("portable_moe")
    for model in (eager, ours):
        model(ids(), labels=ids()).loss.backward()
    for (name, a), (_, b) in zip(eager.named_parameters(), ours.named_parameters()):
        if "experts" in name:
            assert b.grad is not None and b.grad.abs().sum() > 0, name
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_refuses_experts_it_cannot_run():
    import transformers as tf

    cfg = tf.GptOssConfig(hidden_size=32, intermediate_size=16, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
                          vocab_size=64, layer_types=["full_attention"])
    model = tf.GptOssForCausalLM(cfg).eval()
    model.set_experts_implementation("portable_moe")
    with pytest.raises(HFImportError, match="GptOssExperts: per-expert biases"):
        model(ids())
