"""cross_entropy in TVMScript: `rows` gives each row's -log_softmax(logits)[target] and whether it
counts (target != ignore_index), one row per thread (CPU: parallel rows); `mean` sums both in one
thread (n is tokens, small next to the logits pass) and divides: all rows ignored gives NaN, as torch.

Legend: n rows (symbolic), V classes."""

from __future__ import annotations

import torch
from tvm.script import tirx as T

from ....ir import IRError, Node
from .moe import THREADS, each_row


def rows_kernel(V: int, ignore: int, gpu: bool):
    @T.macro
    def body(t, L, Tg, Out):
        r = T.alloc_buffer((2,), "float32", scope="local")     # max, sum of exp
        if Tg[t] == T.int64(ignore):
            Out[t, 0] = T.float32(0)
            Out[t, 1] = T.float32(0)
        else:
            r[0] = L[t, 0]
            for c in range(1, V):
                r[0] = T.max(r[0], L[t, c])
            r[1] = T.float32(0)
            for c in range(V):
                r[1] = r[1] + T.exp(L[t, c] - r[0])
            Out[t, 0] = T.log(r[1]) + r[0] - L[t, Tg[t]]
            Out[t, 1] = T.float32(1)

    @T.prim_func
    def rows(logits: T.handle, targets: T.handle, out: T.handle):
        T.func_attr({"global_symbol": "rows", "tirx.noalias": True})
        n = T.int64()
        L = T.match_buffer(logits, (n, V), "float32")
        Tg = T.match_buffer(targets, (n,), "int64")
        Out = T.match_buffer(out, (n, 2), "float32")
        each_row(n, gpu, body, L, Tg, Out)

    return rows


def mean_kernel(gpu: bool):
    @T.macro
    def body(_row, P, Y):
        acc = T.alloc_buffer((2,), "float32", scope="local")
        acc[0] = T.float32(0)
        acc[1] = T.float32(0)
        for t in range(P.shape[0]):
            acc[0] = acc[0] + P[t, 0]
            acc[1] = acc[1] + P[t, 1]
        Y[0] = acc[0] / acc[1]

    @T.prim_func
    def mean(parts: T.handle, loss: T.handle):
        T.func_attr({"global_symbol": "mean", "tirx.noalias": True})
        n = T.int64()
        P = T.match_buffer(parts, (n, 2), "float32")
        Y = T.match_buffer(loss, (1,), "float32")
        each_row(1, gpu, body, P, Y)

    return mean


def cross_entropy_step(node: Node, V: int, step_cls):
    ignore = node.attrs["ignore_index"]

    def kernels(gpu, target):
        return {"rows": rows_kernel(V, ignore, gpu), "mean": mean_kernel(gpu)}

    def run(call, logits, targets):
        l2 = logits.reshape(-1, V).float().contiguous()
        t = targets.reshape(-1).contiguous()
        bad = (t != ignore) & ((t < 0) | (t >= V))
        if bad.any():
            raise IRError(f"target {t[bad][0].item()} out of range [0, {V}) and not ignore_index={ignore}",
                          node=node.name, op="cross_entropy")
        parts = torch.empty(t.shape[0], 2, dtype=torch.float32)
        call("rows", l2, t, parts)
        loss = torch.empty(1, dtype=torch.float32)
        call("mean", parts, loss)
        return [loss.reshape(())]

    launch = {"rows": lambda s: ((-(-s["n"] // THREADS),), (THREADS,)), "mean": lambda s: ((1,), (THREADS,))}
    return step_cls("cross_entropy", [node], {"op": "cross_entropy", "V": V, "ignore_index": ignore},
                    kernels, run, launch)
