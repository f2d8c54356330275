"""TVMScript kernels (float32, symbolic token counts) and the loop nests they share: `gpu` picks a parallel
loop on the CPU or blocks of THREADS threads on a GPU around a macro written once per row or element."""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

THREADS = 64


def sym(*names: str) -> list[tirx.Var]:
    """Fresh symbolic int64 dims, bound by the buffers whose shapes use them."""
    return [tirx.Var(name, "int64") for name in names]


@T.macro
def each_row(n, gpu, body, *args):
    """body(row, *args) for rows 0..n-1."""
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
    """body(row, column, *args): on a GPU one block per row, its threads over the columns."""
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
