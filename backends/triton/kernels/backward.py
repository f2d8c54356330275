"""Backward kernels of the element-wise and permutation ops. Legend: T tokens, K top-k, R = T*K rows,
H hidden, F half width (SwiGLU). All sums in float32.

swiglu_bwd_kernel: from gate_up = [g, u] and dh, d[g, u] = [dh * u * silu'(g), dh * silu(g)] with
  silu'(g) = s * (1 + g * (1 - s)), s = sigmoid(g).
combine_bwd_kernel: for row r holding pair p = order[r] (token p // K): dy[r] = w[p] * dout[p // K] and
  dw[p] = <y[r], dout[p // K]>.
The dispatch backward, dx[t] = sum over k of drows[inverse[t*K + k]], is combine with unit weights."""

import triton
import triton.language as tl


@triton.jit
def swiglu_bwd_kernel(gu_ptr, dh_ptr, dgu_ptr, F, BLOCK_F: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    f_ok = f < F
    g = tl.load(gu_ptr + m * 2 * F + f, mask=f_ok, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + m * 2 * F + F + f, mask=f_ok, other=0.0).to(tl.float32)
    dh = tl.load(dh_ptr + m * F + f, mask=f_ok, other=0.0).to(tl.float32)
    s = 1.0 / (1.0 + tl.exp(-g))
    dg = dh * u * (s * (1.0 + g * (1.0 - s)))
    du = dh * (g * s)
    dt = dgu_ptr.dtype.element_ty
    tl.store(dgu_ptr + m * 2 * F + f, dg.to(dt), mask=f_ok)
    tl.store(dgu_ptr + m * 2 * F + F + f, du.to(dt), mask=f_ok)


@triton.jit
def combine_bwd_kernel(y_ptr, order_ptr, w_ptr, dout_ptr, dy_ptr, dw_ptr, H, TOP_K: tl.constexpr,
                       BLOCK_H: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    p = tl.load(order_ptr + r)
    t = p // TOP_K
    w = tl.load(w_ptr + p).to(tl.float32)
    dot_H = tl.full([BLOCK_H], 0, dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)
        h_ok = h < H
        g_H = tl.load(dout_ptr + t * H + h, mask=h_ok, other=0.0).to(tl.float32)
        y_H = tl.load(y_ptr + r * H + h, mask=h_ok, other=0.0).to(tl.float32)
        tl.store(dy_ptr + r * H + h, (g_H * w).to(dy_ptr.dtype.element_ty), mask=h_ok)
        dot_H += g_H * y_H
    tl.store(dw_ptr + p, tl.sum(dot_H, axis=0).to(dw_ptr.dtype.element_ty))
