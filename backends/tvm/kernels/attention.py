"""Multi-head attention (grouped-query, optional causal mask) in TVMScript: two kernels, symbolic batch, seq:

- `prep`: per (batch, position, head) row of q or k: optional RMS norm (weight w), then rotate-half
  RoPE with base theta (0 disables), written to a scratch tensor;
- `attend`: per (batch, query position, head): one pass over the keys with an online softmax (running
  max m and sum l, float32), accumulating straight into the output row (no per-thread arrays, which
  TVM's AMDGPU codegen miscompiles); grouped-query: q head h reads kv head h // G.

CPU: parallel over rows (prep) and over batch*heads (attend); q.k in 8 vectorised partial sums, the
row update vectorised over head_dim.
GPU: one thread per row; blocks of THREADS positions (x) of one (batch, head) pair (y).

Legend: B batch, S seq (both symbolic), N q heads, KV kv heads, D head_dim, G = N // KV, W width N*D.
"""

from __future__ import annotations

import math

import torch
from tvm.script import tirx as T

from ....ir import Node
from .moe import THREADS

LOW = -3.0e38       # the running max starts here, not at -inf (no inf - inf on fast-math targets)


def prep_kernel(heads: int, D: int, theta: float, eps: float, norm: bool, gpu: bool):
    """x[B, S, heads*D], w[D] -> y[B, S, heads*D]; w is all ones when there is no norm."""
    half = D // 2
    rope, log_theta = theta > 0, (math.log(theta) if theta > 0 else 0.0)

    @T.macro
    def body(b, s, h, X, Wn, Y):
        r = T.alloc_buffer((1,), "float32", scope="local")
        r[0] = T.float32(1)
        if norm:
            r[0] = T.float32(0)
            for d in range(D):
                r[0] = r[0] + X[b, s, h * D + d] * X[b, s, h * D + d]
            r[0] = T.rsqrt(r[0] / T.float32(D) + T.float32(eps))
        if rope:
            for d in range(D):
                ang = T.Cast("float32", s) * T.exp(T.float32(-2.0 * log_theta / D) * T.Cast("float32", d % half))
                p = (d + half) % D
                mate = X[b, s, h * D + p] * r[0] * Wn[p]
                Y[b, s, h * D + d] = X[b, s, h * D + d] * r[0] * Wn[d] * T.cos(ang) + \
                    T.if_then_else(d < half, -mate, mate) * T.sin(ang)
        else:
            for d in range(D):
                Y[b, s, h * D + d] = X[b, s, h * D + d] * r[0] * Wn[d]

    @T.prim_func
    def prep(x: T.handle, w: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "prep", "tirx.noalias": True})
        batch = T.int64()
        seq = T.int64()
        X = T.match_buffer(x, (batch, seq, heads * D), "float32")
        Wn = T.match_buffer(w, (D,), "float32")
        Y = T.match_buffer(y, (batch, seq, heads * D), "float32")
        if gpu:
            for by in T.thread_binding(batch * heads, thread="blockIdx.y"):
                for bx in T.thread_binding((seq + THREADS - 1) // THREADS, thread="blockIdx.x"):
                    for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                        if bx * THREADS + tx < seq:
                            body(by // heads, bx * THREADS + tx, by % heads, X, Wn, Y)
        else:
            for row in T.parallel(batch * seq):
                for h in range(heads):
                    body(row // seq, row % seq, h, X, Wn, Y)

    return prep


def attend_kernel(N: int, KV: int, D: int, causal: bool, gpu: bool):
    """q[B, S, N*D], k, v[B, S, KV*D] (q, k already normed and rotated) -> y[B, S, N*D]."""
    G = N // KV
    scale = 1.0 / math.sqrt(D)
    lanes = 8 if D % 8 == 0 and not gpu else 1        # CPU: 8 partial sums break the add chain

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
        if gpu:
            for d in range(D):
                Y[b, i, h * D + d] = Y[b, i, h * D + d] * c + p * V[b, j, h // G * D + d]
        else:
            for d in T.vectorized(D):
                Y[b, i, h * D + d] = Y[b, i, h * D + d] * c + p * V[b, j, h // G * D + d]

    @T.macro
    def body(b, i, h, seq, Q, K, V, Y):
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
    def attend(q: T.handle, k: T.handle, v: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "attend", "tirx.noalias": True})
        batch = T.int64()
        seq = T.int64()
        Q = T.match_buffer(q, (batch, seq, N * D), "float32")
        K = T.match_buffer(k, (batch, seq, KV * D), "float32")
        V = T.match_buffer(v, (batch, seq, KV * D), "float32")
        Y = T.match_buffer(y, (batch, seq, N * D), "float32")
        if gpu:
            for by in T.thread_binding(batch * N, thread="blockIdx.y"):
                for bx in T.thread_binding((seq + THREADS - 1) // THREADS, thread="blockIdx.x"):
                    for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                        if bx * THREADS + tx < seq:
                            body(by // N, bx * THREADS + tx, by % N, seq, Q, K, V, Y)
        else:
            for bh in T.parallel(batch * N):
                for i in range(seq):
                    body(bh // N, i, bh % N, seq, Q, K, V, Y)

    return attend


def attention_step(node: Node, step_cls):
    a = node.attrs
    N, KV, D, theta = a["num_heads"], a["num_kv_heads"], a["head_dim"], a["rope_theta"]
    q_norm, k_norm = (len(node.inputs) > i and node.inputs[i] is not None for i in (3, 4))

    def kernels(gpu, target):
        return {"prep_q": prep_kernel(N, D, theta, a["eps"], q_norm, gpu),
                "prep_k": prep_kernel(KV, D, theta, a["eps"], k_norm, gpu),
                "attend": attend_kernel(N, KV, D, a["causal"], gpu)}

    def run(call, q, k, v, wq=None, wk=None):
        q, k, v = (t.float().contiguous() for t in (q, k, v))
        ones = torch.ones(D, dtype=torch.float32)
        q_rot, k_rot, y = torch.empty_like(q), torch.empty_like(k), torch.empty_like(q)
        if y.numel() == 0:                      # TVM rejects the strides torch gives empty tensors
            return [y]
        call("prep_q", q, ones if wq is None else wq.float(), q_rot)
        call("prep_k", k, ones if wk is None else wk.float(), k_rot)
        call("attend", q_rot, k_rot, v, y)
        return [y]

    def rows(heads):
        return lambda s: ((-(-s["seq"] // THREADS), s["batch"] * heads), (THREADS, 1))

    launch = {"prep_q": rows(N), "prep_k": rows(KV), "attend": rows(N)}
    spec = {"op": "attention", "q_norm": q_norm, "k_norm": k_norm, **a}
    return step_cls("attention", [node], spec, kernels, run, launch)
