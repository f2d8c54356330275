"""Per-dtype tolerances, shared by the conformance suite and shadow validation.

Element-wise: |got - want| <= atol + rtol * |want|, want computed in float64. rtol/atol start from
PyTorch's assert_close defaults (float32 1.3e-6/1e-5, float16 1e-3/1e-5, bfloat16 1.6e-2/1e-5) and
are loosened for our ops because they reduce over the hidden size: a sum of n rounded products has
error ~ sqrt(n)*eps, so with n up to ~4096 and float32 accumulation the float32 bound becomes 1e-4
(~ sqrt(4096)*1.2e-7*10), and for float16/bfloat16 outputs one rounding of the output dominates,
so 2 ulps: 2e-3 and 1.6e-2. Global: DeepGEMM's metric 1 - 2*sum(xy)/(sum(x^2)+sum(y^2)), float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    global_err: float


TOLERANCES = {
    torch.float64: Tolerance(1e-10, 1e-12, 1e-20),
    torch.float32: Tolerance(1e-4, 1e-5, 1e-9),
    torch.float16: Tolerance(2e-3, 1e-4, 1e-5),
    torch.bfloat16: Tolerance(1.6e-2, 1e-3, 1e-4),
}


def global_error(got: torch.Tensor, want: torch.Tensor) -> float:
    x, y = got.double().flatten(), want.double().flatten()
    finite = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[finite], y[finite]
    denom = (x * x).sum() + (y * y).sum()
    return 0.0 if denom == 0 else float(1 - 2 * (x * y).sum() / denom)


def excess(got: torch.Tensor, want: torch.Tensor, tol: Tolerance) -> tuple[float, int]:
    """(max of |got-want| / (atol + rtol|want|), elements over the bound); NaN/Inf must match exactly."""
    g, w = got.double(), want.double()
    nan_mismatch = torch.isnan(g) != torch.isnan(w)
    inf_mismatch = (torch.isinf(w) | torch.isinf(g)) & (g != w) & ~torch.isnan(w)
    both = torch.isfinite(g) & torch.isfinite(w)
    ratio = torch.zeros_like(w)
    ratio[both] = (g[both] - w[both]).abs() / (tol.atol + tol.rtol * w[both].abs())
    ratio[nan_mismatch | inf_mismatch] = float("inf")
    worst = float(ratio.max()) if ratio.numel() else 0.0
    return worst, int((ratio > 1).sum())
