"""patch_hf: the patched transformers model trains and generates exactly like the unpatched one."""

from __future__ import annotations

import copy

import pytest
import torch
from hf_tiny import FAMILIES, make_model

from portable_moe.hf import HFImportError, patch_hf
from portable_moe.hf.patch import PatchedMoE


def train_losses(model, steps: int = 3) -> list[float]:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)   # linear in the grads: comparable weights
    g = torch.Generator().manual_seed(7)
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, 64, (2, 8), generator=g)
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family", FAMILIES)
def test_patched_training_matches_unpatched(family, models):
    ref = copy.deepcopy(models(family))
    patched = copy.deepcopy(ref)
    replaced = patch_hf(patched, backend="reference")
    assert replaced and all(isinstance(patched.get_submodule(n), PatchedMoE) for n in replaced)
    assert [n for n, _ in patched.named_parameters()] == [n for n, _ in ref.named_parameters()]
    before = {n: p.detach().clone() for n, p in patched.named_parameters()}
    want, got = train_losses(ref), train_losses(patched)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    moved = [n for n, p in patched.named_parameters() if "experts" in n and not torch.equal(p, before[n])]
    assert moved, "training did not update the experts' shared Parameters"
    for (n, a), (_, b) in zip(ref.named_parameters(), patched.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=n)


def test_patched_generate(models):
    ref = models("qwen3_moe")
    patched = copy.deepcopy(ref)
    patch_hf(patched, backend="reference")
    prompt = torch.tensor([[1, 5, 9]])
    want = ref.generate(prompt, max_new_tokens=4, do_sample=False)
    assert torch.equal(patched.generate(prompt, max_new_tokens=4, do_sample=False), want)


def test_refuses_router_jitter():
    with pytest.raises(HFImportError, match="router_jitter_noise"):
        patch_hf(make_model("mixtral", router_jitter_noise=0.1))
