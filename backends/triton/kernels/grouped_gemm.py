"""Grouped GEMM over expert segments: y[offsets[e]:offsets[e+1]] = x[...] @ w[e]^T, fp32 accumulation.

Legend: R rows (sorted by expert), E experts, N out features, K in features, F = N/2 (SwiGLU).
The M-tiles of all segments are numbered in expert order (each segment padded to BLOCK_M in the tile
map only, not in memory); program (m, n) finds its expert from the offsets, so no host sync is needed.
Epilogues: SWIGLU computes silu(x @ Wg^T) * (x @ Wu^T) with Wg = w[e, :F], Wu = w[e, F:], rounding like
grouped_matmul then swiglu; SCALE multiplies each output row by scale[order[row]] (routing weight)."""

import triton
import triton.language as tl


@triton.jit
def segment_tile(offsets_ptr, pid_m, E: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_M: tl.constexpr):
    """The rows of M-tile pid_m, tiles numbered segment by segment: (valid, expert, rows, row mask)."""
    e = tl.arange(0, BLOCK_E)
    lo_E = tl.load(offsets_ptr + e, mask=e < E, other=0)
    hi_E = tl.load(offsets_ptr + e + 1, mask=e < E, other=0)
    tiles_E = (hi_E - lo_E + BLOCK_M - 1) // BLOCK_M
    ends_E = tl.cumsum(tiles_E, axis=0)
    expert = tl.sum(tl.where(ends_E <= pid_m, 1, 0), axis=0)
    here = e == expert
    first_tile = tl.sum(tl.where(here, ends_E - tiles_E, 0), axis=0)
    seg_hi = tl.sum(tl.where(here, hi_E, 0), axis=0)
    rm = tl.sum(tl.where(here, lo_E, 0), axis=0) + (pid_m - first_tile) * BLOCK_M + tl.arange(0, BLOCK_M)
    return pid_m < tl.sum(tiles_E, axis=0), expert, rm, rm < seg_hi


@triton.jit
def grouped_gemm_kernel(x_ptr, w_ptr, y_ptr, offsets_ptr, scale_ptr, order_ptr, N_OUT, K,
                        E: tl.constexpr, SWIGLU: tl.constexpr, SCALE: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_E: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(1)
    valid, expert, rm, m_ok = segment_tile(offsets_ptr, tl.program_id(0), E, BLOCK_E, BLOCK_M)
    if valid:
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N_OUT
        n_total = N_OUT * 2 if SWIGLU else N_OUT
        w_e = w_ptr + expert.to(tl.int64) * n_total * K
        acc = tl.full([BLOCK_M, BLOCK_N], 0, dtype=tl.float32)
        acc_up = tl.full([BLOCK_M, BLOCK_N], 0, dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < K
            a = tl.load(x_ptr + rm[:, None].to(tl.int64) * K + rk[None, :], mask=m_ok[:, None] & k_ok[None, :],
                        other=0.0)
            b = tl.load(w_e + rn[None, :] * K + rk[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            if SWIGLU:
                b_up = tl.load(w_e + (rn[None, :] + N_OUT) * K + rk[:, None], mask=n_ok[None, :] & k_ok[:, None],
                               other=0.0)
                acc_up = tl.dot(a, b_up, acc_up, input_precision=PRECISION)
        dt = y_ptr.dtype.element_ty
        if SWIGLU:
            g32 = acc.to(dt).to(tl.float32)
            act = (g32 * (1.0 / (1.0 + tl.exp(-g32)))).to(dt)
            acc = act.to(tl.float32) * acc_up.to(dt).to(tl.float32)
        if SCALE:
            pair = tl.load(order_ptr + rm, mask=m_ok, other=0)
            acc = acc * tl.load(scale_ptr + pair, mask=m_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(y_ptr + rm[:, None].to(tl.int64) * N_OUT + rn[None, :], acc.to(dt),
                 mask=m_ok[:, None] & n_ok[None, :])
