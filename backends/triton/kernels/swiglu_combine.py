"""SwiGLU and combine kernels, forward and backward; sums in float32. Legend: K top-k, H hidden, F half width."""

import triton
import triton.language as tl


@triton.jit
def combine_kernel(y_ptr, inverse_ptr, w_ptr, out_ptr, H, TOP_K: tl.constexpr, BLOCK_H: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = h < H
    acc_H = tl.full([BLOCK_H], 0, dtype=tl.float32)
    for k in tl.static_range(TOP_K):
        r = tl.load(inverse_ptr + t * TOP_K + k)
        w = tl.load(w_ptr + t * TOP_K + k).to(tl.float32)
        y_H = tl.load(y_ptr + r * H + h, mask=h_ok, other=0.0).to(tl.float32)
        acc_H = acc_H + y_H * w
    tl.store(out_ptr + t * H + h, acc_H.to(out_ptr.dtype.element_ty), mask=h_ok)


@triton.jit
def swiglu_rounded(gate, up):
    """silu(gate) * up in float32, silu rounded to gate's dtype as the reference's separate ops round."""
    g = gate.to(tl.float32)
    return (g * tl.sigmoid(g)).to(gate.dtype).to(tl.float32) * up.to(tl.float32)


@triton.jit
def swiglu_kernel(x_ptr, y_ptr, F, BLOCK_F: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    f_ok = f < F
    gate = tl.load(x_ptr + m * 2 * F + f, mask=f_ok, other=0.0)
    up = tl.load(x_ptr + m * 2 * F + F + f, mask=f_ok, other=0.0)
    tl.store(y_ptr + m * F + f, swiglu_rounded(gate, up).to(y_ptr.dtype.element_ty), mask=f_ok)


@triton.jit
def swiglu_bwd_kernel(gu_ptr, dh_ptr, dgu_ptr, F, BLOCK_F: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    f_ok = f < F
    g = tl.load(gu_ptr + m * 2 * F + f, mask=f_ok, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + m * 2 * F + F + f, mask=f_ok, other=0.0).to(tl.float32)
    dh = tl.load(dh_ptr + m * F + f, mask=f_ok, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    dt = dgu_ptr.dtype.element_ty
    tl.store(dgu_ptr + m * 2 * F + f, (dh * u * (s * (1.0 + g * (1.0 - s)))).to(dt), mask=f_ok)     # silu'(g)
    tl.store(dgu_ptr + m * 2 * F + F + f, (dh * (g * s)).to(dt), mask=f_ok)


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
