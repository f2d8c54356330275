"""MoE kernels: router selection, dispatch (stable counting sort, row gather), combine. T tokens,
E experts, K top-k, G expert groups, H hidden, R = T*K rows. Top-k ties go to the lower index; NaN ranks
above every number, as in torch's descending sort. Scratch rows live in output buffers, not per-thread
arrays (TVM's AMDGPU codegen miscompiles those)."""

from __future__ import annotations

from tvm import te
from tvm.script import tirx as T

from . import each_row, no_alias, sym


def router_select(E: int, K: int, scoring: str, G: int, TG: int, group_score: str, normalize: bool,
                  scaling: float, gpu: bool):
    """logits[T, E], score_bias[E] -> weights[T, K], indices[T, K]; scores, selection[T, E] are scratch."""
    per, neg = E // G, T.float32(float("-inf"))
    (n,) = sym("n")

    @T.macro
    def pick(vals, row, taken, count, out_idx, slot):
        best = T.alloc_buffer((1,), "float32", scope="local")
        bi = T.alloc_buffer((1,), "int32", scope="local")
        bi[0] = -1
        best[0] = neg
        for e in range(count):
            v = vals[row, e]
            if taken[e] == 0 and (bi[0] < 0 or (T.isnan(v) and not T.isnan(best[0])) or v > best[0]):
                bi[0] = e
                best[0] = v
        taken[bi[0]] = 1
        out_idx[slot] = bi[0]

    @T.macro
    def softmax(src, dst, t, count, red):
        red[0] = src[t, 0]
        for i in range(1, count):
            red[0] = T.max(red[0], src[t, i])
        red[1] = T.float32(0)
        for i in range(count):
            dst[t, i] = T.exp(src[t, i] - red[0])
            red[1] = red[1] + dst[t, i]
        for i in range(count):
            dst[t, i] = dst[t, i] / red[1]

    @T.macro
    def keep_top_groups(t, sel, red, picked):
        gsc = T.alloc_buffer((1, G), "float32", scope="local")
        gtaken = T.alloc_buffer((G,), "int32", scope="local")
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
            gsc[0, g] = red[0] if group_score == "max" else red[0] + red[1]
        for j in range(TG):
            pick(gsc, 0, gtaken, G, picked, j)
        for e in range(E):
            if gtaken[e // per] == 0:
                sel[t, e] = neg

    @T.macro
    def body(t, L, SB, W, Idx, s, sel):
        taken = T.alloc_buffer((E,), "int32", scope="local")
        picked = T.alloc_buffer((E,), "int32", scope="local")
        red = T.alloc_buffer((2,), "float32", scope="local")
        if scoring == "softmax":
            softmax(L, s, t, E, red)
        for e in range(E):
            if scoring != "softmax":
                s[t, e] = T.sigmoid(L[t, e]) if scoring == "sigmoid" else L[t, e]
            sel[t, e] = s[t, e] + SB[e]
            taken[e] = 0
        if G > 1:
            keep_top_groups(t, sel, red, picked)
        red[1] = T.float32(0)
        for k in range(K):
            pick(sel, t, taken, E, picked, k)
            Idx[t, k] = T.Cast("int64", picked[k])
            W[t, k] = s[t, picked[k]]
            red[1] = red[1] + W[t, k]
        if scoring == "softmax_topk":
            softmax(W, W, t, K, red)
        for k in range(K):
            if normalize and scoring != "softmax_topk":
                W[t, k] = W[t, k] / (red[1] + T.float32(1e-20))
            W[t, k] = W[t, k] * T.float32(scaling)

    @T.prim_func
    def select(L: T.Buffer((n, E), "float32"), SB: T.Buffer((E,), "float32"), W: T.Buffer((n, K), "float32"),
               Idx: T.Buffer((n, K), "int64"), S: T.Buffer((n, E), "float32"), Q: T.Buffer((n, E), "float32")):
        each_row(n, gpu, body, L, SB, W, Idx, S, Q)

    return no_alias(select)


def dispatch_sort(E: int, gpu: bool):
    """indices[R] -> offsets[E+1], order[R], a stable counting sort: one serial pass on the CPU (R is small
    next to the GEMMs); on a GPU one thread per expert counts the rows of lower experts (its start) and writes
    its own rows in order."""
    (R,) = sym("R")

    @T.macro
    def body(e, Idx, Off, P):
        c = T.alloc_buffer((1,), "int64", scope="local")
        c[0] = T.int64(0)
        for p in range(R):
            if Idx[p] < T.Cast("int64", e):
                c[0] = c[0] + 1
        Off[e] = c[0]
        if e == E - 1:
            Off[E] = R
        for p in range(R):
            if Idx[p] == T.Cast("int64", e):
                P[c[0]] = p
                c[0] = c[0] + 1

    @T.prim_func
    def sort(Idx: T.Buffer((R,), "int64"), Off: T.Buffer((E + 1,), "int64"), P: T.Buffer((R,), "int64")):
        if gpu:
            each_row(E, gpu, body, Idx, Off, P)
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

    return no_alias(sort)


def inverse_order(gpu: bool):
    """inverse[order[r]] = r: combine reads rows through it."""
    (R,) = sym("R")

    @T.macro
    def body(r, P, V):
        V[P[r]] = r

    @T.prim_func
    def invert(P: T.Buffer((R,), "int64"), V: T.Buffer((R,), "int64")):
        each_row(R, gpu, body, P, V)

    return no_alias(invert)


def gather_rows(H: int, K: int) -> list:
    """rows[r] = x[order[r] // K]."""
    n, R = sym("n", "R")
    X, P = te.placeholder((n, H), name="X"), te.placeholder((R,), "int64", "P")
    return [X, P, te.compute((R, H), lambda r, h: X[P[r] // K, h], "Y")]


def combine(K: int, H: int) -> list:
    """out[t] = sum over k = 0..K-1, in order, of weights[t, k] * y[inverse[t*K + k]]."""
    n, R = sym("n", "R")
    Y, V, W = te.placeholder((R, H), name="Y"), te.placeholder((R,), "int64", "V"), te.placeholder((n, K), name="W")
    k = te.reduce_axis((0, K), "k")
    return [Y, V, W, te.compute((n, H), lambda t, h: te.sum(Y[V[t * K + k], h] * W[t, k], axis=k), "Out")]

