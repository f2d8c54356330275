"""Backward of the grouped GEMM y[seg e] = x[seg e] @ w[e]^T, fp32 accumulation (ScatterMoE style).

Legend: R rows (sorted by expert), E experts, N out features of the forward, K in features.
grouped_gemm_dx_kernel: dx[seg e] = dy[seg e] @ w[e] (a grouped GEMM with the transposed weight), its
  M-tiles numbered over the segments exactly like the forward's (no host sync).
grouped_gemm_dw_kernel: dw[e] = dy[seg e]^T @ x[seg e] (a grouped "X^T.Y"), one program per
  (expert, N-tile, K-tile) looping over the rows of its segment; an expert with no rows gets zeros."""

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
def grouped_gemm_dx_kernel(dy_ptr, w_ptr, dx_ptr, offsets_ptr, N, K, E: tl.constexpr, PRECISION: tl.constexpr,
                           BLOCK_E: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr):
    pid_k = tl.program_id(1)
    valid, expert, rm, m_ok = segment_tile(offsets_ptr, tl.program_id(0), E, BLOCK_E, BLOCK_M)
    if valid:
        rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        w_e = w_ptr + expert.to(tl.int64) * N * K
        acc = tl.full([BLOCK_M, BLOCK_K], 0, dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            n_ok = rn < N
            a = tl.load(dy_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], mask=m_ok[:, None] & n_ok[None, :],
                        other=0.0)
            b = tl.load(w_e + rn[:, None] * K + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        tl.store(dx_ptr + rm[:, None].to(tl.int64) * K + rk[None, :], acc.to(dx_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & k_ok[None, :])


@triton.jit
def grouped_gemm_dw_kernel(dy_ptr, x_ptr, dw_ptr, offsets_ptr, N, K, PRECISION: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    expert = tl.program_id(0).to(tl.int64)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok = rn < N
    k_ok = rk < K
    lo = tl.load(offsets_ptr + expert)
    hi = tl.load(offsets_ptr + expert + 1)
    acc = tl.full([BLOCK_N, BLOCK_K], 0, dtype=tl.float32)
    for m0 in range(lo, hi, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        m_ok = rm < hi
        dy = tl.load(dy_ptr + rm[:, None] * N + rn[None, :], mask=m_ok[:, None] & n_ok[None, :], other=0.0)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(dy), x, acc, input_precision=PRECISION)
    tl.store(dw_ptr + expert * N * K + rn[:, None] * K + rk[None, :], acc.to(dw_ptr.dtype.element_ty),
             mask=n_ok[:, None] & k_ok[None, :])
