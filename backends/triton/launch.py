"""Launches the kernels on torch tensors. CUDA/ROCm tensors run Triton-compiled code; CPU tensors run
the SAME kernel source through Triton's interpreter (InterpretedFunction over the kernel's Python
function), so nobody has to set TRITON_INTERPRET before importing.

Legend: T tokens, H hidden, E experts, K top-k, R = T*K rows, N out features, F = N/2."""

from __future__ import annotations

import contextlib
import functools
import threading

import numpy as np
import torch
import triton
from triton.runtime.interpreter import InterpretedFunction, _patch_lang
from triton.runtime.jit import JITFunction

from . import kernels
from .kernels.router import scoring_code
from .tuning import GemmConfig

_INTERPRETER_LOCK = threading.RLock()


def _call_interpreted(self, *args, **kwargs):
    # InterpretedFunction.__call__ patches triton.language for good (harmless when everything is
    # interpreted); here the patch must end with the call, or later GPU compiles break.
    scope = _patch_lang(self.fn)
    try:
        return interpreted_fn(self.fn).rewrite()(*args, **kwargs)
    finally:
        scope.restore()


@functools.cache
def interpreted_fn(fn) -> InterpretedFunction:
    return InterpretedFunction(fn)


@contextlib.contextmanager
def interpreter_scope():
    """While a kernel is interpreted, calls to @triton.jit helpers (tl.sum, tl.cumsum, ... are such) run
    interpreted too: what TRITON_INTERPRET=1 does at import time, limited to this scope."""
    with _INTERPRETER_LOCK:
        saved = JITFunction.__call__
        JITFunction.__call__ = _call_interpreted
        try:
            yield
        finally:
            JITFunction.__call__ = saved


class Interpreted:
    def __init__(self, fn):
        self.fn = interpreted_fn(fn)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            # numpy stands in for the GPU: exp overflowing to inf is the intended IEEE result, not news
            with interpreter_scope(), np.errstate(over="ignore", invalid="ignore"):
                return self.fn[grid](*args, **kwargs)
        return launch


def kernel(name: str, t: torch.Tensor):
    jitted = getattr(kernels, name)
    return Interpreted(jitted.fn) if t.device.type == "cpu" else jitted


def pow2(n: int) -> int:
    return max(2, triton.next_power_of_2(max(int(n), 1)))


def dot_precision(t: torch.Tensor) -> str:
    """fp32 dots: 3xTF32 on NVIDIA tensor cores (near-fp32 accuracy), native fp32 elsewhere."""
    if t.dtype == torch.float32 and t.device.type == "cuda" and torch.version.hip is None:
        return "tf32x3"
    return "ieee"


def router(x, weight, bias, score_bias, *, top_k, scoring, num_groups, top_groups, group_score, normalize,
           scaling):
    lead, (E, H) = x.shape[:-1], weight.shape
    x_TH = x.reshape(-1, H).contiguous()
    T = x_TH.shape[0]
    weights_TK = torch.empty(T, top_k, dtype=x.dtype, device=x.device)
    idx_TK = torch.empty(T, top_k, dtype=torch.int64, device=x.device)
    logits_TE = torch.empty(T, E, dtype=torch.float32, device=x.device)
    if T:
        kernel("router_kernel", x)[(T,)](
            x_TH, weight.contiguous(), bias.contiguous() if bias is not None else logits_TE,
            score_bias.contiguous() if score_bias is not None else logits_TE, weights_TK, idx_TK, logits_TE, H,
            float(scaling),
            E=E, TOP_K=top_k, SCORING=scoring_code(scoring), NUM_GROUPS=num_groups, TOP_GROUPS=top_groups,
            GROUP_TOP2=group_score == "top2_sum", NORMALIZE=normalize, HAS_BIAS=bias is not None,
            HAS_SCORE_BIAS=score_bias is not None, BLOCK_E=pow2(E), BLOCK_H=min(pow2(H), 128),
            BLOCK_K=pow2(top_k), BLOCK_G=pow2(num_groups))
    return weights_TK.reshape(*lead, top_k), idx_TK.reshape(*lead, top_k), logits_TE.reshape(*lead, E)


def dispatch(x, indices, *, num_experts):
    top_k, H = indices.shape[-1], x.shape[-1]
    idx_R = indices.reshape(-1).contiguous()
    R = idx_R.numel()
    order_R = torch.empty(R, dtype=torch.int64, device=x.device)
    offsets = torch.empty(num_experts + 1, dtype=torch.int64, device=x.device)
    kernel("dispatch_kernel", x)[(1,)](idx_R, order_R, offsets, R, E=num_experts, BLOCK_E=pow2(num_experts),
                                      BLOCK_R=64)
    rows_RH = torch.empty(R, H, dtype=x.dtype, device=x.device)
    if R and H:
        block_h = min(pow2(H), 256)
        kernel("gather_kernel", x)[(R, triton.cdiv(H, block_h))](x.reshape(-1, H).contiguous(), order_R, rows_RH,
                                                                  H, TOP_K=top_k, BLOCK_H=block_h)
    return rows_RH, offsets, order_R


def grouped_matmul(x_RK, weight_ENK, offsets, cfg: GemmConfig, *, swiglu=False, scale=None, order=None):
    """y = x @ w[e]^T per segment; swiglu fuses the activation (out width N/2); scale[order[row]] scales rows."""
    R, K = x_RK.shape
    E, N = weight_ENK.shape[:2]
    n_out = N // 2 if swiglu else N
    y = torch.empty(R, n_out, dtype=x_RK.dtype, device=x_RK.device)
    if R == 0 or n_out == 0:
        return y
    grid = (triton.cdiv(R, cfg.block_m) + E, triton.cdiv(n_out, cfg.block_n))
    extra = {} if x_RK.device.type == "cpu" else {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                                                   "enable_fp_fusion": True}
    kernel("grouped_gemm_kernel", x_RK)[grid](
        x_RK.contiguous(), weight_ENK.contiguous(), y, offsets.contiguous(),
        scale.contiguous() if scale is not None else y, order.contiguous() if order is not None else offsets,
        n_out, K, E=E, SWIGLU=swiglu, SCALE=scale is not None,
        PRECISION=dot_precision(x_RK), BLOCK_E=pow2(E), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, **extra)
    return y


def swiglu(x):
    F = x.shape[-1] // 2
    x_M2F = x.reshape(-1, 2 * F).contiguous()
    y = torch.empty(x_M2F.shape[0], F, dtype=x.dtype, device=x.device)
    if y.numel():
        block = min(pow2(F), 256)
        kernel("swiglu_kernel", x)[(x_M2F.shape[0], triton.cdiv(F, block))](x_M2F, y, F, BLOCK_F=block)
    return y.reshape(*x.shape[:-1], F)


def inverse_permutation(order_R):
    """inverse[order[r]] = r: where each (token, k) pair's row landed."""
    R = order_R.numel()
    inverse_R = torch.empty(R, dtype=order_R.dtype, device=order_R.device)
    kernel("inverse_kernel", order_R)[(triton.cdiv(R, 256),)](order_R.contiguous(), inverse_R, R, BLOCK_R=256)
    return inverse_R


def combine(y_RH, order_R, weights):
    top_k, H = weights.shape[-1], y_RH.shape[-1]
    R = order_R.numel()
    T = R // top_k if top_k else 0
    out = torch.empty(T, H, dtype=y_RH.dtype, device=y_RH.device)
    if R and H:
        inverse_R = inverse_permutation(order_R)
        block = min(pow2(H), 256)
        kernel("combine_kernel", y_RH)[(T, triton.cdiv(H, block))](
            y_RH.contiguous(), inverse_R, weights.reshape(-1).contiguous(), out, H, TOP_K=top_k, BLOCK_H=block)
    return out.reshape(*weights.shape[:-1], H)
