"""The MoE grouped GEMM (vLLM-style): y[r] = a[r // A_DIV] @ w[e]^T, one expert per M-block (..launch.moe_align);
A_DIV = top_k reads token rows straight from x, SWIGLU and SCALE (the routing weight) are epilogues, W_TMA loads
weights by TMA, GROUP_M M-blocks run together so their rows stay in L2. Backward: dw[e] = dy[seg e]^T @ x[seg e].
SwiGLU also runs alone (swiglu_kernel, swiglu_bwd_kernel) where it is not fused."""

import triton
import triton.language as tl


@triton.jit
def weight_tile(w, row0, k0, K, n_ok, W_TMA: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """w[row0 : row0 + BLOCK_N, k0 : k0 + BLOCK_K]^T of the [E * N, K] weights, zeros outside."""
    if W_TMA:
        tile = w.load([row0.to(tl.int32), k0]).T
    else:
        rn = row0 + tl.arange(0, BLOCK_N)
        rk = k0 + tl.arange(0, BLOCK_K)
        tile = tl.load(w + rn[None, :] * K + rk[:, None], mask=n_ok[None, :] & (rk < K)[:, None], other=0.0)
    return tile


@triton.jit
def swiglu_rounded(gate, up):
    """silu(gate) * up in float32, silu rounded to gate's dtype as the reference's separate ops round."""
    g = gate.to(tl.float32)
    return (g * tl.sigmoid(g)).to(gate.dtype).to(tl.float32) * up.to(tl.float32)


@triton.jit
def moe_gemm_kernel(a_ptr, w, y_ptr, slots_ptr, block_expert_ptr, scale_ptr, ROWS, N_OUT, K,
                    A_DIV: tl.constexpr, SWIGLU: tl.constexpr, SCALE: tl.constexpr, W_TMA: tl.constexpr,
                    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr):
    pid, num_n = tl.program_id(0), tl.cdiv(N_OUT, BLOCK_N)
    pid_m, pid_n = tl.swizzle2d(pid // num_n, pid % num_n, tl.num_programs(0) // num_n, num_n, GROUP_M)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert >= 0:
        rows = tl.load(slots_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
        m_ok = rows < ROWS
        a_rows = (rows // A_DIV).to(tl.int64)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N_OUT
        w_row = expert.to(tl.int64) * (N_OUT * 2 if SWIGLU else N_OUT) + pid_n * BLOCK_N
        acc = tl.full([BLOCK_M, BLOCK_N], 0, dtype=tl.float32)
        acc_up = tl.full([BLOCK_M, BLOCK_N], 0, dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(a_ptr + a_rows[:, None] * K + rk[None, :], mask=m_ok[:, None] & (rk < K)[None, :], other=0.0)
            b = weight_tile(w, w_row, k0, K, n_ok, W_TMA, BLOCK_N, BLOCK_K)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            if SWIGLU:
                b_up = weight_tile(w, w_row + N_OUT, k0, K, n_ok, W_TMA, BLOCK_N, BLOCK_K)
                acc_up = tl.dot(a, b_up, acc_up, input_precision=PRECISION)
        dt = y_ptr.dtype.element_ty
        if SWIGLU:
            acc = swiglu_rounded(acc.to(dt), acc_up.to(dt))
        if SCALE:
            acc = acc.to(dt).to(tl.float32) * tl.load(scale_ptr + rows, mask=m_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(y_ptr + rows[:, None].to(tl.int64) * N_OUT + rn[None, :], acc.to(dt),
                 mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def grouped_gemm_dw_kernel(dy_ptr, x_ptr, dw_ptr, offsets_ptr, N, K, PRECISION: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    expert = tl.program_id(0).to(tl.int64)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok, k_ok = rn < N, rk < K
    lo, hi = tl.load(offsets_ptr + expert), tl.load(offsets_ptr + expert + 1)
    acc = tl.full([BLOCK_N, BLOCK_K], 0, dtype=tl.float32)
    for m0 in range(lo, hi, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        m_ok = rm < hi
        dy = tl.load(dy_ptr + rm[:, None] * N + rn[None, :], mask=m_ok[:, None] & n_ok[None, :], other=0.0)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(dy), x, acc, input_precision=PRECISION)
    tl.store(dw_ptr + expert * N * K + rn[:, None] * K + rk[None, :], acc.to(dw_ptr.dtype.element_ty),
             mask=n_ok[:, None] & k_ok[None, :])


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
