"""Each executable backend runs each family's imported MoE block and matches transformers."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import FAMILIES

import portable_moe
from portable_moe import registry
from portable_moe.backends.devices import discover
from portable_moe.hf import from_hf
from portable_moe.runtime.tolerance import TOLERANCES, excess


def cpu_backend_or_reason(name: str):
    try:
        backend = registry.load(name)
    except registry.BackendUnavailable as e:
        return e.reason
    if not backend.executes:
        return f"{name}: compiles only, never executes"
    return backend.availability(discover()[0])


@pytest.mark.parametrize("backend", [n for n in registry.backend_names() if n != "reference"])
@pytest.mark.parametrize("family", FAMILIES)
def test_block_on_backend(backend, family, models):
    reason = cpu_backend_or_reason(backend)
    if reason:
        pytest.skip(reason)
    model = models(family)
    imp = from_hf(model, block_only=True)
    x_TH = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        want = model.model.layers[imp.layer].mlp(x_TH[None])[0]
        got = portable_moe.compile(imp.graph, imp.params, device="cpu", backend=backend)(x_TH)
    worst, _ = excess(got.cpu(), want, TOLERANCES[torch.float32])
    assert worst <= 1, f"{family} on {backend}: {worst}x the float32 tolerance"
