"""Dispatch and combine, forward and backward (K top-k, R = T*K pairs, E experts, H hidden; sums in float32):
dispatch_kernel sorts pairs by expert stably, bucket_kernel places rows for the MoE GEMM in any order within an
expert (atomics; results do not depend on it), combine_kernel sums each token's k rows in order."""

import triton
import triton.language as tl


@triton.jit
def dispatch_kernel(idx_ptr, order_ptr, offsets_ptr, R, E: tl.constexpr, BLOCK_E: tl.constexpr,
                    BLOCK_R: tl.constexpr):
    e = tl.arange(0, BLOCK_E)
    counts_E = tl.full([BLOCK_E], 0, dtype=tl.int64)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        expert = tl.load(idx_ptr + r, mask=r < R, other=BLOCK_E)
        counts_E += tl.sum(tl.where(expert[:, None] == e[None, :], 1, 0).to(tl.int64), axis=0)
    starts_E = tl.cumsum(counts_E, axis=0) - counts_E
    tl.store(offsets_ptr + e, starts_E, mask=e < E)
    tl.store(offsets_ptr + E + e, tl.sum(counts_E, axis=0) + e * 0, mask=e == 0)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        expert = tl.load(idx_ptr + r, mask=r < R, other=BLOCK_E)
        onehot_RE = tl.where(expert[:, None] == e[None, :], 1, 0).to(tl.int64)
        before_RE = tl.cumsum(onehot_RE, axis=0) - onehot_RE
        pos_R = tl.sum((before_RE + starts_E[None, :]) * onehot_RE, axis=1)
        tl.store(order_ptr + pos_R, r.to(tl.int64), mask=r < R)
        starts_E += tl.sum(onehot_RE, axis=0)


@triton.jit
def gather_kernel(x_ptr, order_ptr, rows_ptr, H, TOP_K: tl.constexpr, BLOCK_H: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    t = tl.load(order_ptr + r) // TOP_K
    v = tl.load(x_ptr + t * H + h, mask=h < H)
    tl.store(rows_ptr + r * H + h, v, mask=h < H)


@triton.jit
def inverse_kernel(order_ptr, inverse_ptr, R, BLOCK_R: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    p = tl.load(order_ptr + r, mask=r < R, other=0)
    tl.store(inverse_ptr + p, r.to(tl.int64), mask=r < R)


@triton.jit
def bucket_kernel(experts_ptr, cursor_ptr, slots_ptr, R, PLACE: tl.constexpr, BLOCK_R: tl.constexpr):
    """Counts rows per expert into cursor (PLACE=False), or puts each row in its expert's next slot."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    expert = tl.load(experts_ptr + r, mask=r < R, other=0)
    slot = tl.atomic_add(cursor_ptr + expert, 1, mask=r < R)
    if PLACE:
        tl.store(slots_ptr + slot, r, mask=r < R)


@triton.jit
def align_kernel(counts_ptr, cursor_ptr, block_expert_ptr, NUM_BLOCKS, E: tl.constexpr, BLOCK_E: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_B: tl.constexpr):
    """Each expert's first slot (into cursor) and the expert of every M-block (-1 past the last)."""
    e = tl.arange(0, BLOCK_E)
    blocks_E = (tl.load(counts_ptr + e, mask=e < E, other=0) + BLOCK_M - 1) // BLOCK_M
    ends_E = tl.cumsum(blocks_E, axis=0)
    tl.store(cursor_ptr + e, (ends_E - blocks_E) * BLOCK_M, mask=e < E)
    total = tl.sum(blocks_E, axis=0)
    for b0 in range(0, NUM_BLOCKS, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)
        expert = tl.sum(tl.where(ends_E[None, :] <= b[:, None], 1, 0), axis=1)
        tl.store(block_expert_ptr + b, tl.where(b < total, expert, -1), mask=b < NUM_BLOCKS)


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
