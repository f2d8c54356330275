"""torch.autograd.Functions around the Triton kernels, and the backward kernels' launches (legend as in .launch).
The router's backward is torch autograd through the IR's meaning (float32) for the experts the kernel chose."""

from __future__ import annotations

import torch
import triton

from ...ir.meanings import router_scores, routing_weights
from . import launch
from .launch import pow2, run
from .tuning import GemmConfig


def grouped_matmul_dw(dy_RN, x_RK, offsets, num_experts: int, cfg: GemmConfig):
    """dw[e] = dy[seg e]^T @ x[seg e]; zeros for experts without rows."""
    N, K = dy_RN.shape[1], x_RK.shape[1]
    dw_ENK = torch.empty(num_experts, N, K, dtype=x_RK.dtype, device=x_RK.device)
    if dw_ENK.numel():
        # rows are the reduction here; the N x K fp32 accumulator is capped at 128 x 128 (registers)
        tiles = {"BLOCK_M": cfg.block_k, "BLOCK_N": min(cfg.block_m, 128), "BLOCK_K": min(cfg.block_n, 128)}
        run("grouped_gemm_dw_kernel", (num_experts, triton.cdiv(N, tiles["BLOCK_N"]), triton.cdiv(K, tiles["BLOCK_K"])),
            dy_RN.contiguous(), x_RK.contiguous(), dw_ENK, offsets.contiguous(), N, K,
            PRECISION=launch.dot_precision(dy_RN), **tiles, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return dw_ENK


def swiglu_bwd(gate_up_M2F, dh_MF):
    """d(gate_up) from the pre-activation gate_up = [g, u] and the output gradient dh."""
    F = dh_MF.shape[-1]
    gu = gate_up_M2F.reshape(-1, 2 * F).contiguous()
    dgu = torch.empty_like(gu)
    if gu.shape[0] and F:
        run("swiglu_bwd_kernel", (gu.shape[0], triton.cdiv(F, 256)), gu, dh_MF.reshape(-1, F).contiguous(), dgu, F,
            BLOCK_F=pow2(F, 256))
    return dgu.reshape(gate_up_M2F.shape)


class GroupedMatmulFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_RK, weight_ENK, offsets, cfg: GemmConfig, swiglu: bool):
        ctx.save_for_backward(x_RK, weight_ENK, offsets)
        ctx.cfg, ctx.swiglu = cfg, swiglu
        return launch.grouped_matmul(x_RK, weight_ENK, offsets, cfg, swiglu=swiglu)

    @staticmethod
    def backward(ctx, dy):
        x_RK, w_ENK, offsets = ctx.saved_tensors
        if ctx.swiglu:      # recomputes gate_up rather than keeping R x 2F alive
            dy = swiglu_bwd(launch.grouped_matmul(x_RK, w_ENK, offsets, ctx.cfg), dy)
        need_x, need_w = ctx.needs_input_grad[:2]
        dx = launch.grouped_matmul(dy, w_ENK.transpose(1, 2).contiguous(), offsets, ctx.cfg) if need_x else None
        dw = grouped_matmul_dw(dy, x_RK, offsets, w_ENK.shape[0], ctx.cfg) if need_w else None
        return dx, dw, None, None, None


class SwigluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return launch.swiglu(x)

    @staticmethod
    def backward(ctx, dy):
        return swiglu_bwd(*ctx.saved_tensors, dy)


class CombineFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_RH, order_R, weights):
        ctx.save_for_backward(y_RH, order_R, weights)
        return launch.combine(y_RH, order_R, weights)

    @staticmethod
    def backward(ctx, dout):
        y_RH, order_R, weights = ctx.saved_tensors
        H = y_RH.shape[-1]
        dy_RH, dw = y_RH.new_zeros(y_RH.shape), weights.new_zeros(weights.numel())
        if order_R.numel() and H:
            run("combine_bwd_kernel", (order_R.numel(),), y_RH.contiguous(), order_R.contiguous(),
                weights.reshape(-1).contiguous(), dout.reshape(-1, H).contiguous(), dy_RH, dw, H,
                TOP_K=weights.shape[-1], BLOCK_H=pow2(H, 256))
        return dy_RH, None, dw.reshape(weights.shape)


class DispatchFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, indices, num_experts: int):
        rows_RH, offsets, order_R = launch.dispatch(x, indices, num_experts=num_experts)
        ctx.save_for_backward(order_R)
        ctx.x_shape, ctx.indices_shape = x.shape, indices.shape
        ctx.mark_non_differentiable(offsets, order_R)
        return rows_RH, offsets, order_R

    @staticmethod
    def backward(ctx, drows_RH, _offsets, _order):
        """dx[t] = the sum of the gradients of the rows copied from token t: combine with unit weights."""
        (order_R,) = ctx.saved_tensors
        if not ctx.indices_shape[-1]:
            return drows_RH.new_zeros(ctx.x_shape), None, None
        dx = launch.combine(drows_RH, order_R, drows_RH.new_ones(ctx.indices_shape))
        return dx.reshape(ctx.x_shape), None, None


class RouterFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, score_bias, attrs: dict):
        weights_TK, idx_TK, logits_TE = launch.router(x, weight, bias, score_bias, **attrs)
        ctx.save_for_backward(x, weight, bias, idx_TK)
        ctx.attrs = attrs
        ctx.mark_non_differentiable(idx_TK)
        return weights_TK, idx_TK, logits_TE

    @staticmethod
    def backward(ctx, dweights, _idx, dlogits):
        x, weight, bias, idx_TK = ctx.saved_tensors
        a = ctx.attrs
        x, weight, bias = (t if t is None else t.detach().requires_grad_() for t in (x, weight, bias))
        with torch.enable_grad():
            logits, scores_TE = router_scores(x.reshape(-1, x.shape[-1]).float(), weight, bias, a["scoring"])
            w_TK = routing_weights(scores_TE, idx_TK.reshape(-1, idx_TK.shape[-1]), scoring=a["scoring"],
                                   normalize=a["normalize"], scaling=a["scaling"])
            torch.autograd.backward((w_TK, logits), (dweights.reshape_as(w_TK).float(), dlogits.reshape_as(logits)))
        return x.grad, weight.grad, None if bias is None else bias.grad, None, None
