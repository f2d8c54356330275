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
    """TE tensors (inputs, then the output) as a PrimFunc. CPU: each stage's outer loop parallel. GPU: one
    kernel, a block per row of the output (its leading spatial loops, fused: only the grid fuses, a fused
    extent elsewhere would become a host-computed argument), THREADS threads over its last dim; earlier stages
    are inlined (elementwise) or computed per block into shared memory, the threads splitting the reduction."""
    sch = tvm.s_tir.Schedule(te.create_prim_func(tensors))
    *stages, last = sch.get_child_blocks(sch.get_sblock("root"))
    spatial = {b: [loop for loop, v in zip(sch.get_loops(b), sch.get(b).iter_vars) if v.iter_type == 0]
               for b in (*stages, last)}
    if not gpu:
        for loops in spatial.values():
            if loops:
                sch.parallel(loops[0])
        return sch.mod["main"]
    *rows, cols = spatial[last] or [sch.add_unit_loop(last)]      # a reduction to one value: one thread
    c0, tx = sch.split(cols, [None, THREADS])
    sch.reorder(tx, c0)
    sch.bind(tx, "threadIdx.x")
    row = sch.fuse(*rows) if rows else sch.add_unit_loop(tx)
    sch.bind(row, "blockIdx.x")
    for block in reversed(stages):
        if all(v.iter_type == 0 for v in sch.get(block).iter_vars):
            sch.compute_inline(block)
        else:
            sch.compute_at(block, row)
            sch.set_scope(block, 0, "shared")
            sch.bind(sch.split(sch.get_loops(block)[-1], [None, THREADS])[1], "threadIdx.x")
    return sch.mod["main"]
