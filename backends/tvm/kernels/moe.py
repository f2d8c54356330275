"""The data-dependent MoE kernels in TVMScript: router selection, dispatch (counting sort and row
gather), combine, SwiGLU. Each kernel is written once as a macro over one token/row; `gpu` picks the
loop nest around it: a parallel loop on the CPU, or blocks of THREADS threads on a GPU.

Legend: T tokens (symbolic), E experts, K top-k, G expert groups, H hidden, R = T*K rows, F width.
Ties in top-k go to the lower index (a strict `>` while scanning upwards); NaN ranks above every
number, as in torch's descending sort.
"""

from __future__ import annotations

from tvm.script import tirx as T

THREADS = 64


@T.macro
def each_row(n, gpu, body, *args):
    """body(row, *args) for rows 0..n-1: a parallel loop on the CPU; blocks of THREADS threads on a GPU."""
    if gpu:
        for bx in T.thread_binding((n + THREADS - 1) // THREADS, thread="blockIdx.x"):
            for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                if bx * THREADS + tx < n:
                    body(bx * THREADS + tx, *args)
    else:
        for t in T.parallel(n):
            body(t, *args)


@T.macro
def each_element(n, width, gpu, body, *args):
    """body(row, column, *args): rows in parallel (CPU) or one block per row, threads over columns (GPU)."""
    if gpu:
        for bx in T.thread_binding(n, thread="blockIdx.x"):
            for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                for c0 in range((width + THREADS - 1) // THREADS):
                    if c0 * THREADS + tx < width:
                        body(bx, c0 * THREADS + tx, *args)
    else:
        for r in T.parallel(n):
            for c in range(width):
                body(r, c, *args)


def router_select(E: int, K: int, scoring: str, G: int, TG: int, group_score: str, normalize: bool,
                  scaling: float, gpu: bool):
    """logits[T, E] (float32), score_bias[E] -> weights[T, K], indices[T, K]; scores and selection [T, E]
    are scratch outputs (kept out of per-thread arrays, which TVM's AMDGPU codegen miscompiles)."""
    per = E // G
    neg = T.float32(float("-inf"))

    @T.macro
    def pick(vals, row, taken, n, out_idx, slot):
        best = T.alloc_buffer((1,), "float32", scope="local")
        bi = T.alloc_buffer((1,), "int32", scope="local")
        bi[0] = -1
        best[0] = neg
        for e in range(n):
            v = vals[row, e]
            if taken[e] == 0 and (bi[0] < 0 or (T.isnan(v) and not T.isnan(best[0])) or v > best[0]):
                bi[0] = e
                best[0] = v
        taken[bi[0]] = 1
        out_idx[slot] = bi[0]

    @T.macro
    def body(t, L, SB, W, Idx, s, sel):
        taken = T.alloc_buffer((E,), "int32", scope="local")
        gsc = T.alloc_buffer((1, G), "float32", scope="local")
        gtaken = T.alloc_buffer((G,), "int32", scope="local")
        picked = T.alloc_buffer((E,), "int32", scope="local")
        red = T.alloc_buffer((2,), "float32", scope="local")
        if scoring == "softmax":
            red[0] = L[t, 0]
            for e in range(1, E):
                red[0] = T.max(red[0], L[t, e])
            red[1] = T.float32(0)
            for e in range(E):
                s[t, e] = T.exp(L[t, e] - red[0])
                red[1] = red[1] + s[t, e]
            for e in range(E):
                s[t, e] = s[t, e] / red[1]
        elif scoring == "sigmoid":
            for e in range(E):
                s[t, e] = T.sigmoid(L[t, e])
        else:
            for e in range(E):
                s[t, e] = L[t, e]
        for e in range(E):
            sel[t, e] = s[t, e] + SB[e]
            taken[e] = 0
        if G > 1:
            for g in range(G):
                gtaken[g] = 0
                red[0] = neg
                red[1] = neg
                for j in range(per):
                    if sel[t, g * per + j] > red[0]:
                        red[1] = red[0]
                        red[0] = sel[t, g * per + j]
                    elif sel[t, g * per + j] > red[1]:
                        red[1] = sel[t, g * per + j]
                if group_score == "max":
                    gsc[0, g] = red[0]
                else:
                    gsc[0, g] = red[0] + red[1]
            for j in range(TG):
                pick(gsc, 0, gtaken, G, picked, j)
            for e in range(E):
                if gtaken[e // per] == 0:
                    sel[t, e] = neg
        for k in range(K):
            pick(sel, t, taken, E, picked, k)
        if scoring == "softmax_topk":
            red[0] = s[t, picked[0]]
            for k in range(1, K):
                red[0] = T.max(red[0], s[t, picked[k]])
            red[1] = T.float32(0)
            for k in range(K):
                red[1] = red[1] + T.exp(s[t, picked[k]] - red[0])
            for k in range(K):
                W[t, k] = T.exp(s[t, picked[k]] - red[0]) / red[1] * T.float32(scaling)
        else:
            red[1] = T.float32(0)
            for k in range(K):
                red[1] = red[1] + s[t, picked[k]]
            for k in range(K):
                if normalize:
                    W[t, k] = s[t, picked[k]] / (red[1] + T.float32(1e-20)) * T.float32(scaling)
                else:
                    W[t, k] = s[t, picked[k]] * T.float32(scaling)
        for k in range(K):
            Idx[t, k] = T.Cast("int64", picked[k])

    @T.prim_func
    def select(logits: T.handle, score_bias: T.handle, weights: T.handle, indices: T.handle, scores: T.handle,
               selection: T.handle):
        T.func_attr({"global_symbol": "select", "tirx.noalias": True})
        n = T.int64()
        L = T.match_buffer(logits, (n, E), "float32")
        SB = T.match_buffer(score_bias, (E,), "float32")
        W = T.match_buffer(weights, (n, K), "float32")
        Idx = T.match_buffer(indices, (n, K), "int64")
        S = T.match_buffer(scores, (n, E), "float32")
        Q = T.match_buffer(selection, (n, E), "float32")
        each_row(n, gpu, body, L, SB, W, Idx, S, Q)

    return select


def dispatch_sort(E: int, gpu: bool):
    """indices[R] -> offsets[E+1], order[R]: a stable counting sort. On the CPU one serial pass (R is
    small next to the GEMMs); on a GPU one block with one thread per expert: each counts its pairs,
    the counts meet in shared memory, and each thread writes its own pairs in p order."""

    @T.prim_func
    def sort(indices: T.handle, offsets: T.handle, order: T.handle):
        T.func_attr({"global_symbol": "sort", "tirx.noalias": True})
        R = T.int64()
        Idx = T.match_buffer(indices, (R,), "int64")
        Off = T.match_buffer(offsets, (E + 1,), "int64")
        P = T.match_buffer(order, (R,), "int64")
        if gpu:
            for _bx in T.thread_binding(1, thread="blockIdx.x"):
                for e in T.thread_binding(E, thread="threadIdx.x"):
                    counts = T.alloc_buffer((E,), "int64", scope="shared")
                    c = T.alloc_buffer((1,), "int64", scope="local")
                    c[0] = T.int64(0)
                    for p in range(R):
                        if Idx[p] == T.Cast("int64", e):
                            c[0] = c[0] + 1
                    counts[e] = c[0]
                    T.tvm_storage_sync("shared")
                    c[0] = T.int64(0)
                    for j in range(E):
                        if j < e:
                            c[0] = c[0] + counts[j]
                    Off[e] = c[0]
                    if e == E - 1:
                        Off[E] = R
                    for p in range(R):
                        if Idx[p] == T.Cast("int64", e):
                            P[c[0]] = p
                            c[0] = c[0] + 1
        else:
            cursor = T.alloc_buffer((E + 1,), "int64")
            for e in range(E + 1):
                cursor[e] = T.int64(0)
            for p in range(R):
                cursor[Idx[p] + 1] = cursor[Idx[p] + 1] + 1
            for e in range(E):
                cursor[e + 1] = cursor[e + 1] + cursor[e]
            for e in range(E + 1):
                Off[e] = cursor[e]
            for p in range(R):
                P[cursor[Idx[p]]] = p
                cursor[Idx[p]] = cursor[Idx[p]] + 1

    return sort


def gather_rows(H: int, K: int, gpu: bool):
    """rows[r] = x[order[r] // K]."""

    @T.macro
    def body(r, X, P, Y):
        for h in range(H):
            Y[r, h] = X[P[r] // K, h]

    @T.prim_func
    def gather(x: T.handle, order: T.handle, rows: T.handle):
        T.func_attr({"global_symbol": "gather", "tirx.noalias": True})
        n = T.int64()
        R = T.int64()
        X = T.match_buffer(x, (n, H), "float32")
        P = T.match_buffer(order, (R,), "int64")
        Y = T.match_buffer(rows, (R, H), "float32")
        each_row(R, gpu, body, X, P, Y)

    return gather


def inverse_order(gpu: bool):
    """inverse[order[r]] = r: combine reads rows through it."""

    @T.macro
    def body(r, P, V):
        V[P[r]] = r

    @T.prim_func
    def invert(order: T.handle, inverse: T.handle):
        T.func_attr({"global_symbol": "invert", "tirx.noalias": True})
        R = T.int64()
        P = T.match_buffer(order, (R,), "int64")
        V = T.match_buffer(inverse, (R,), "int64")
        each_row(R, gpu, body, P, V)

    return invert


def combine(K: int, H: int, gpu: bool):
    """out[t] = sum over k = 0..K-1, in order, of weights[t, k] * y[inverse[t*K + k]]."""

    @T.macro
    def body(t, h, Y, V, W, Out):
        acc = T.alloc_buffer((1,), "float32", scope="local")
        acc[0] = Y[V[t * K], h] * W[t, 0]
        for k in range(1, K):
            acc[0] = acc[0] + Y[V[t * K + k], h] * W[t, k]
        Out[t, h] = acc[0]

    @T.prim_func
    def comb(y: T.handle, inverse: T.handle, weights: T.handle, out: T.handle):
        T.func_attr({"global_symbol": "combine", "tirx.noalias": True})
        n = T.int64()
        R = T.int64()
        Y = T.match_buffer(y, (R, H), "float32")
        V = T.match_buffer(inverse, (R,), "int64")
        W = T.match_buffer(weights, (n, K), "float32")
        Out = T.match_buffer(out, (n, H), "float32")
        each_element(n, H, gpu, body, Y, V, W, Out)

    return comb


def swiglu(F: int, gpu: bool):
    """y[r, f] = silu(x[r, f]) * x[r, F + f]."""

    @T.macro
    def body(r, f, X, Y):
        Y[r, f] = X[r, f] / (T.float32(1) + T.exp(-X[r, f])) * X[r, F + f]

    @T.prim_func
    def swi(x: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "swiglu", "tirx.noalias": True})
        n = T.int64()
        X = T.match_buffer(x, (n, 2 * F), "float32")
        Y = T.match_buffer(y, (n, F), "float32")
        each_element(n, F, gpu, body, X, Y)

    return swi
