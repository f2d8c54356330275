"""Multi-head attention (grouped-query, optional causal mask): `prep` RMS-norms (weight w) and rotates
(RoPE, base theta; 0 disables) each head row of q or k into scratch; `attend` makes one pass over the keys
per query row with an online softmax (running max and sum, float32), accumulating into the output row.
B batch, S seq (both symbolic), D head_dim; q head h reads kv head h // (N // KV)."""

from __future__ import annotations

import math

from tvm.script import tirx as T

from . import THREADS, no_alias, sym

LOW = -3.0e38       # the running max starts here, not at -inf (no inf - inf on fast-math targets)


@T.macro
def each_head_row(batch, seq, heads, gpu, body, *args):
    """body(b, s, h, *args); CPU: parallel over (batch, head); GPU: blocks of THREADS positions of one pair."""
    if gpu:
        for by in T.thread_binding(batch * heads, thread="blockIdx.y"):
            for bx in T.thread_binding((seq + THREADS - 1) // THREADS, thread="blockIdx.x"):
                for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                    if bx * THREADS + tx < seq:
                        body(by // heads, bx * THREADS + tx, by % heads, *args)
    else:
        for bh in T.parallel(batch * heads):
            for s in range(seq):
                body(bh // heads, s, bh % heads, *args)


def prep(heads: int, D: int, theta: float, eps: float, norm: bool, gpu: bool):
    """x[B, S, heads*D], w[D] -> y[B, S, heads*D]; w is all ones when there is no norm."""
    half, log_theta = D // 2, math.log(theta) if theta > 0 else 0.0
    batch, seq = sym("batch", "seq")

    @T.macro
    def body(b, s, h, X, Wn, Y):
        r = T.alloc_buffer((1,), "float32", scope="local")
        r[0] = T.float32(1)
        if norm:
            r[0] = T.float32(0)
            for d in range(D):
                r[0] = r[0] + X[b, s, h * D + d] * X[b, s, h * D + d]
            r[0] = T.rsqrt(r[0] / T.float32(D) + T.float32(eps))
        for d in range(D):
            if theta > 0:
                ang = T.Cast("float32", s) * T.exp(T.float32(-2.0 * log_theta / D) * T.Cast("float32", d % half))
                p = (d + half) % D
                mate = X[b, s, h * D + p] * r[0] * Wn[p]
                Y[b, s, h * D + d] = X[b, s, h * D + d] * r[0] * Wn[d] * T.cos(ang) + \
                    T.if_then_else(d < half, -mate, mate) * T.sin(ang)
            else:
                Y[b, s, h * D + d] = X[b, s, h * D + d] * r[0] * Wn[d]

    @T.prim_func
    def kernel(X: T.Buffer((batch, seq, heads * D), "float32"), Wn: T.Buffer((D,), "float32"),
               Y: T.Buffer((batch, seq, heads * D), "float32")):
        each_head_row(batch, seq, heads, gpu, body, X, Wn, Y)

    return no_alias(kernel)


def attend(N: int, KV: int, D: int, causal: bool, gpu: bool):
    """q[B, S, N*D], k, v[B, S, KV*D] (q, k already prepared) -> y[B, S, N*D]."""
    G, scale = N // KV, 1.0 / math.sqrt(D)
    lanes = 8 if D % 8 == 0 and not gpu else 1        # CPU: 8 partial sums break the add chain
    vec = T.serial if gpu else T.vectorized
    batch, seq = sym("batch", "seq")

    @T.macro
    def dot(Q, K, b, i, j, h, st):
        acc = T.alloc_buffer((lanes,), "float32", scope="local")
        for u in T.vectorized(lanes):
            acc[u] = T.float32(0)
        for d0 in range(D // lanes):
            for u in T.vectorized(lanes):
                acc[u] = acc[u] + Q[b, i, h * D + d0 * lanes + u] * K[b, j, h // G * D + d0 * lanes + u]
        st[2] = T.float32(0)
        for u in range(lanes):
            st[2] = st[2] + acc[u]

    @T.macro
    def scale_row(Y, b, i, h, c, V, j, p):
        for d in vec(D):
            Y[b, i, h * D + d] = Y[b, i, h * D + d] * c + p * V[b, j, h // G * D + d]

    @T.macro
    def body(b, i, h, Q, K, V, Y):
        st = T.alloc_buffer((3,), "float32", scope="local")     # running max, running sum, score
        st[0] = T.float32(LOW)
        st[1] = T.float32(0)
        for d in range(D):
            Y[b, i, h * D + d] = T.float32(0)
        for j in range(i + 1 if causal else seq):
            dot(Q, K, b, i, j, h, st)
            st[2] = st[2] * T.float32(scale)
            m = T.max(st[0], st[2])
            c = T.exp(st[0] - m)
            p = T.exp(st[2] - m)
            st[1] = st[1] * c + p
            st[0] = m
            scale_row(Y, b, i, h, c, V, j, p)
        scale_row(Y, b, i, h, T.float32(1) / st[1], V, 0, T.float32(0))

    @T.prim_func
    def kernel(Q: T.Buffer((batch, seq, N * D), "float32"), K: T.Buffer((batch, seq, KV * D), "float32"),
               V: T.Buffer((batch, seq, KV * D), "float32"), Y: T.Buffer((batch, seq, N * D), "float32")):
        each_head_row(batch, seq, N, gpu, body, Q, K, V, Y)

    return no_alias(kernel)
