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


def no_alias(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """A TVMScript kernel's buffers never overlap (TE kernels say so already): LLVM may vectorise freely."""
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
    """TE tensors (inputs, then the output) as a PrimFunc, each stage's outer loop parallel on the CPU. GPU: a
    block per row (leading spatial loops), THREADS threads over the last dim; reductions stay in the thread.
    Only the grid fuses: a fused extent would become a host-computed kernel argument."""
    sch = tvm.s_tir.Schedule(te.create_prim_func(tensors))
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        spatial = [loop for loop, v in zip(sch.get_loops(block), sch.get(block).iter_vars) if v.iter_type == 0]
        if not gpu:
            if spatial:
                sch.parallel(spatial[0])
            continue
        *rows, cols = spatial or [sch.add_unit_loop(block)]      # a reduction to one value: one thread
        c0, tx = sch.split(cols, [None, THREADS])
        sch.reorder(tx, c0)
        sch.bind(tx, "threadIdx.x")
        if rows:
            sch.bind(sch.fuse(*rows), "blockIdx.x")
    return sch.mod["main"]
