"""Kernels in float32 with symbolic token counts: TE computes where an op is one (scheduled by `te_kernel`),
TVMScript where it is data-dependent, written once per row around `each_row`; `gpu` picks the loop nest."""

from __future__ import annotations

import tvm
from tvm import te, tirx
from tvm.script import tirx as T

THREADS = 64


def sym(*names: str) -> list[tirx.Var]:
    """Fresh symbolic int64 dims, bound by the buffers whose shapes use them."""
    return [tirx.Var(name, "int64") for name in names]


def script(func: tirx.PrimFunc) -> tirx.PrimFunc:
    return func.with_attr("tirx.noalias", True)


@T.macro
def each_row(n, gpu, body, *args):
    """body(row, *args) for rows 0..n-1: a parallel loop, or one thread each in blocks of THREADS."""
    if gpu:
        for bx in T.thread_binding((n + THREADS - 1) // THREADS, thread="blockIdx.x"):
            for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                if bx * THREADS + tx < n:
                    body(bx * THREADS + tx, *args)
    else:
        for t in T.parallel(n):
            body(t, *args)


def te_kernel(tensors: list, gpu: bool) -> tirx.PrimFunc:
    """TE tensors (inputs, then the output) as a PrimFunc; each stage's outer loop runs in parallel on the CPU,
    and on a GPU its spatial loops fuse into one thread per element (reductions stay inside the thread)."""
    sch = tvm.s_tir.Schedule(te.create_prim_func(tensors))
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(block)
        spatial = [loop for loop, v in zip(loops, sch.get(block).iter_vars) if v.iter_type == 0]
        if gpu:
            bx, tx = sch.split(sch.fuse(*spatial), [None, THREADS])
            sch.bind(bx, "blockIdx.x")
            sch.bind(tx, "threadIdx.x")
        elif loops:
            sch.parallel(loops[0])
    return sch.mod["main"]
