"""Launches the backward kernels on torch tensors (same device rules as .launch: compiled on CUDA/ROCm,
interpreted on the CPU).

Legend: T tokens, H hidden, E experts, K top-k, R = T*K rows, N out features, F = N/2."""

from __future__ import annotations

import torch
import triton

from .launch import combine, dot_precision, gemm_extra, grouped_matmul, kernel, pow2
from .tuning import GemmConfig


def dw_tiles(cfg: GemmConfig) -> dict:
    """Rows are the reduction in dw; the N x K fp32 accumulator is capped at 128 x 128 (registers)."""
    return {"BLOCK_M": cfg.block_k, "BLOCK_N": min(cfg.block_m, 128), "BLOCK_K": min(cfg.block_n, 128)}


def grouped_matmul_dx(dy_RN, weight_ENK, offsets, cfg: GemmConfig):
    """dx[seg e] = dy[seg e] @ w[e]: the forward's grouped GEMM over the transposed weights."""
    return grouped_matmul(dy_RN, weight_ENK.transpose(1, 2).contiguous(), offsets, cfg)


def grouped_matmul_dw(dy_RN, x_RK, offsets, num_experts: int, cfg: GemmConfig):
    """dw[e] = dy[seg e]^T @ x[seg e]; zeros for experts without rows."""
    N, K = dy_RN.shape[1], x_RK.shape[1]
    dw_ENK = torch.empty(num_experts, N, K, dtype=x_RK.dtype, device=x_RK.device)
    if dw_ENK.numel() == 0:
        return dw_ENK
    tiles = dw_tiles(cfg)
    grid = (num_experts, triton.cdiv(N, tiles["BLOCK_N"]), triton.cdiv(K, tiles["BLOCK_K"]))
    kernel("grouped_gemm_dw_kernel", dy_RN)[grid](
        dy_RN.contiguous(), x_RK.contiguous(), dw_ENK, offsets.contiguous(), N, K,
        PRECISION=dot_precision(dy_RN), **tiles, **gemm_extra(dy_RN, cfg))
    return dw_ENK


def swiglu_bwd(gate_up_M2F, dh_MF):
    """d(gate_up) from the pre-activation gate_up = [g, u] and the output gradient dh."""
    F = dh_MF.shape[-1]
    gu = gate_up_M2F.reshape(-1, 2 * F).contiguous()
    dgu = torch.empty_like(gu)
    if gu.shape[0] and F:
        block = min(pow2(F), 256)
        kernel("swiglu_bwd_kernel", gu)[(gu.shape[0], triton.cdiv(F, block))](
            gu, dh_MF.reshape(-1, F).contiguous(), dgu, F, BLOCK_F=block)
    return dgu.reshape(gate_up_M2F.shape)


def combine_bwd(y_RH, order_R, weights, dout):
    """(dy rows, d weights) of out[t] = sum_k weights[t, k] * y[inverse[t*K + k]]."""
    top_k, H = weights.shape[-1], y_RH.shape[-1]
    R = order_R.numel()
    dy_RH = torch.zeros(y_RH.shape, dtype=y_RH.dtype, device=y_RH.device)   # zeros_like keeps odd strides
    dw = torch.zeros(weights.numel(), dtype=weights.dtype, device=weights.device)
    if R and H:
        kernel("combine_bwd_kernel", y_RH)[(R,)](
            y_RH.contiguous(), order_R.contiguous(), weights.reshape(-1).contiguous(),
            dout.reshape(-1, H).contiguous(), dy_RH, dw, H, TOP_K=top_k, BLOCK_H=min(pow2(H), 256))
    return dy_RH, dw.reshape(weights.shape)


def dispatch_bwd(drows_RH, order_R, x_shape, top_k: int):
    """dx[t] = sum of the gradients of the rows copied from token t: combine with unit weights."""
    if not top_k:
        return torch.zeros(x_shape, dtype=drows_RH.dtype, device=drows_RH.device)
    ones = torch.ones(order_R.numel() // top_k, top_k, dtype=drows_RH.dtype, device=drows_RH.device)
    return combine(drows_RH, order_R, ones).reshape(x_shape)
