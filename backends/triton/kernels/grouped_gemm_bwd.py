"""Backward of the grouped GEMM y[seg e] = x[seg e] @ w[e]^T, fp32 accumulation (ScatterMoE style).

Legend: R rows (sorted by expert), E experts, N out features of the forward, K in features.
dx[seg e] = dy[seg e] @ w[e] is the forward's MoE GEMM over the transposed weights (..launch_bwd).
grouped_gemm_dw_kernel: dw[e] = dy[seg e]^T @ x[seg e] (a grouped "X^T.Y"), one program per
  (expert, N-tile, K-tile) looping over the rows of its segment; an expert with no rows gets zeros."""

import triton
import triton.language as tl


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
