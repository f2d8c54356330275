"""torch.autograd.Functions around the Triton kernels; each backward runs Triton kernels too, except the
router's: torch autograd through the reference math (logits -> scores -> weights, float32) for the experts
the kernel selected. The fused gate_up + SwiGLU recomputes gate_up from the saved input in its backward
(one more GEMM instead of keeping R x 2F alive). Legend: T tokens, H hidden, E experts, K top-k,
R = T*K rows, N out features, F = N/2."""

from __future__ import annotations

import torch

from ...ir.meanings import router_scores, routing_weights
from . import launch, launch_bwd
from .tuning import GemmConfig


class GroupedMatmulFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_RK, weight_ENK, offsets, cfg: GemmConfig, swiglu: bool):
        ctx.save_for_backward(x_RK, weight_ENK, offsets)
        ctx.cfg, ctx.swiglu = cfg, swiglu
        return launch.grouped_matmul(x_RK, weight_ENK, offsets, cfg, swiglu=swiglu)

    @staticmethod
    def backward(ctx, dy):
        x_RK, weight_ENK, offsets = ctx.saved_tensors
        if ctx.swiglu:
            gate_up_RN = launch.grouped_matmul(x_RK, weight_ENK, offsets, ctx.cfg)
            dy = launch_bwd.swiglu_bwd(gate_up_RN, dy)
        dx = launch_bwd.grouped_matmul_dx(dy, weight_ENK, offsets, ctx.cfg) if ctx.needs_input_grad[0] else None
        dw = launch_bwd.grouped_matmul_dw(dy, x_RK, offsets, weight_ENK.shape[0], ctx.cfg) \
            if ctx.needs_input_grad[1] else None
        return dx, dw, None, None, None


class SwigluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return launch.swiglu(x)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return launch_bwd.swiglu_bwd(x, dy)


class CombineFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_RH, order_R, weights):
        ctx.save_for_backward(y_RH, order_R, weights)
        return launch.combine(y_RH, order_R, weights)

    @staticmethod
    def backward(ctx, dout):
        y_RH, order_R, weights = ctx.saved_tensors
        dy, dw = launch_bwd.combine_bwd(y_RH, order_R, weights, dout)
        return dy, None, dw


class DispatchFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, indices, num_experts: int):
        rows_RH, offsets, order_R = launch.dispatch(x, indices, num_experts=num_experts)
        ctx.save_for_backward(order_R)
        ctx.x_shape, ctx.top_k = x.shape, indices.shape[-1]
        ctx.mark_non_differentiable(offsets, order_R)
        return rows_RH, offsets, order_R

    @staticmethod
    def backward(ctx, drows_RH, _offsets, _order):
        (order_R,) = ctx.saved_tensors
        return launch_bwd.dispatch_bwd(drows_RH, order_R, ctx.x_shape, ctx.top_k), None, None


def router_weights(x, weight, bias, idx_TK, *, scoring, normalize, scaling, **_):
    """The reference's router math from logits to the routing weights, for the given selection."""
    logits_TE, scores_TE = router_scores(x.reshape(-1, x.shape[-1]).float(), weight, bias, scoring)
    idx_TK = idx_TK.reshape(-1, idx_TK.shape[-1])
    return routing_weights(scores_TE, idx_TK, scoring=scoring, normalize=normalize, scaling=scaling), logits_TE


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
        with torch.enable_grad():
            leaves = [None if t is None else t.detach().requires_grad_(need)
                      for t, need in zip((x, weight, bias), ctx.needs_input_grad)]
            w_TK, logits_TE = router_weights(*leaves, idx_TK, **ctx.attrs)
            wrt = [t for t in leaves if t is not None and t.requires_grad]
            got = iter(torch.autograd.grad(
                (w_TK, logits_TE), wrt, (dweights.reshape(w_TK.shape).float(), dlogits.reshape(logits_TE.shape)),
                allow_unused=True))
        grads = [next(got) if t is not None and t.requires_grad else None for t in leaves]
        return (*grads, None, None)
