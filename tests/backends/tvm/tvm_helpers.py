"""Comparison helpers for the TVM backend tests."""

from __future__ import annotations

import torch

from portable_moe.ir.meanings import run_graph


def reference64(graph, inputs, params):
    as64 = {k: v.double() if v.is_floating_point() else v for k, v in {**inputs, **params}.items()}
    return run_graph(graph, {k: as64[k] for k in inputs}, {k: as64[k] for k in params})


def assert_matches(got, want, rtol=2e-5):
    """Relative to the largest magnitude of the float64 reference (fp32 kernels, short reductions)."""
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape, (g.shape, w.shape)
        if not w.is_floating_point():
            assert torch.equal(g, w)
            continue
        scale = w.abs().max().item() if w.numel() else 1.0
        err = (g.double() - w).abs().max().item() if w.numel() else 0.0
        assert err <= rtol * max(scale, 1e-30), f"max error {err:.3g} vs scale {scale:.3g}"
