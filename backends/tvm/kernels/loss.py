"""cross_entropy: `rows` gives each row's -log_softmax(logits)[target] and whether it counts (target !=
ignore_index); `mean` sums both in one thread (n rows, small next to the logits pass) and divides, so all
rows ignored gives NaN, as torch does. V classes."""

from __future__ import annotations

from tvm.script import tirx as T

from . import each_row, no_alias, sym


def cross_entropy(V: int, ignore: int, gpu: bool) -> dict:
    n, m = sym("n", "n")

    @T.macro
    def row(t, L, Tg, Out):
        r = T.alloc_buffer((2,), "float32", scope="local")     # max, sum of exp
        Out[t, 0] = T.float32(0)
        Out[t, 1] = T.float32(0)
        if Tg[t] != T.int64(ignore):
            r[0] = L[t, 0]
            for c in range(1, V):
                r[0] = T.max(r[0], L[t, c])
            r[1] = T.float32(0)
            for c in range(V):
                r[1] = r[1] + T.exp(L[t, c] - r[0])
            Out[t, 0] = T.log(r[1]) + r[0] - L[t, Tg[t]]
            Out[t, 1] = T.float32(1)

    @T.macro
    def total(_row, P, Y):
        acc = T.alloc_buffer((2,), "float32", scope="local")
        acc[0] = T.float32(0)
        acc[1] = T.float32(0)
        for t in range(m):
            acc[0] = acc[0] + P[t, 0]
            acc[1] = acc[1] + P[t, 1]
        Y[0] = acc[0] / acc[1]

    @T.prim_func
    def rows(L: T.Buffer((n, V), "float32"), Tg: T.Buffer((n,), "int64"), Out: T.Buffer((n, 2), "float32")):
        each_row(n, gpu, row, L, Tg, Out)

    @T.prim_func
    def mean(P: T.Buffer((m, 2), "float32"), Y: T.Buffer((1,), "float32")):
        each_row(1, gpu, total, P, Y)

    return {"rows": no_alias(rows), "mean": no_alias(mean)}
