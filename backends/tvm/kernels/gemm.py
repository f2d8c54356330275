"""Grouped GEMM: y[offsets[e]:offsets[e+1]] = x[...] @ w[e].T per expert segment (`linear` is E = 1).
R rows (symbolic), K in-features, N out-features, E experts; with the SwiGLU epilogue F = N/2 columns out,
y[:, f] = silu(g) * u from columns f and F + f of w."""

from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

from . import no_alias, sym


@dataclass(frozen=True)
class CpuTile:
    """MT x NB accumulators in vector registers; NC column blocks per parallel job (their weight panels stay
    in L2 while the expert's rows stream past them)."""

    MT: int = 6
    NB: int = 16
    NC: int = 4

    def fit(self, n: int) -> CpuTile:
        """The largest tile of this shape whose column block divides n."""
        nb = next(b for b in (self.NB, 64, 32, 16, 8, 4, 2, 1) if b <= self.NB and n % b == 0)
        nc = next(c for c in (self.NC, 8, 4, 2, 1) if c <= self.NC and (n // nb) % c == 0)
        return CpuTile(self.MT, nb, nc)

    def __str__(self) -> str:
        return f"{self.MT}x{self.NB}x{self.NC}"


@dataclass(frozen=True)
class GpuTile:
    """edge x edge outputs per work-group, one per thread; K staged edge at a time through shared memory."""

    edge: int = 16

    def __str__(self) -> str:
        return f"{self.edge}x{self.edge}"


@T.macro
def epilogue(Y, r, n, g, u, Bias, F, swiglu):
    if swiglu:
        Y[r, n] = (g + Bias[n]) / (T.float32(1) + T.exp(-(g + Bias[n]))) * (u + Bias[F + n])
    else:
        Y[r, n] = g + Bias[n]


def gmm_cpu(E: int, N: int, K: int, tile: CpuTile, swiglu: bool = False):
    """Weight packed [E, N/NB, K, NB]: the inner loop is one FMA per vector lane and each panel streams.
    One parallel job per (column group, expert), experts fastest, so every thread sees every expert
    whatever the routing skew; the expert's rows pass MT at a time (then one at a time) over NC panels."""
    F = N // 2 if swiglu else N
    tile = tile.fit(F)
    MT, NB, NC = tile.MT, tile.NB, tile.NC
    (R,) = sym("R")

    @T.macro
    def tile_rows(X, W, Y, Bias, acc, up, e, r0, n0, m_count):
        for m in T.unroll(m_count):
            for n in T.vectorized(NB):
                acc[m, n] = T.float32(0)
                up[m, n] = T.float32(0)
        for k in range(K):
            for m in T.unroll(m_count):
                for n in T.vectorized(NB):
                    acc[m, n] = acc[m, n] + X[r0 + m, k] * W[e, n0 // NB, k, n]
                    if swiglu:
                        up[m, n] = up[m, n] + X[r0 + m, k] * W[e, (F + n0) // NB, k, n]
        for m in T.unroll(m_count):
            for n in T.vectorized(NB):
                epilogue(Y, r0 + m, n0 + n, acc[m, n], up[m, n], Bias, F, swiglu)

    @T.prim_func
    def gmm(X: T.Buffer((R, K), "float32"), W: T.Buffer((E, N // NB, K, NB), "float32"),
            Off: T.Buffer((E + 1,), "int64"), Bias: T.Buffer((N,), "float32"), Y: T.Buffer((R, F), "float32")):
        acc = T.alloc_buffer((MT, NB), "float32", scope="local")
        up = T.alloc_buffer((MT, NB), "float32", scope="local")
        for job in T.parallel(E * (F // (NB * NC))):
            e = job % E
            full = (Off[e + 1] - Off[e]) // MT
            for t in range(full):
                for c in range(NC):
                    tile_rows(X, W, Y, Bias, acc, up, e, Off[e] + t * MT, (job // E * NC + c) * NB, MT)
            for m in range(Off[e] + full * MT, Off[e + 1]):
                for c in range(NC):
                    tile_rows(X, W, Y, Bias, acc, up, e, m, (job // E * NC + c) * NB, 1)

    return no_alias(gmm)


def gmm_gpu(E: int, N: int, K: int, tile: GpuTile, swiglu: bool = False):
    """Weight as in the IR, [E, N, K]. Each expert segment is cut into B-row tiles (vLLM's
    moe_align_block_size); grid (R // B + E) row tiles x ceil(F / B) column tiles, blocks past the last row
    tile idle. x and w tiles are staged in shared memory, one thread per output of a B x B tile."""
    F = N // 2 if swiglu else N
    B = tile.edge
    (R,) = sym("R")

    @T.macro
    def tile_of(Off, bx, ex, rx):
        """Expert ex[0] and first row rx[0] of row tile bx (ex[0] = E past the end)."""
        ex[0] = E
        rx[0] = T.int64(0)
        seen = T.alloc_buffer((1,), "int64", scope="local")
        seen[0] = T.int64(0)
        for e in range(E):
            n_tiles = (Off[e + 1] - Off[e] + B - 1) // B
            if ex[0] == E and bx < seen[0] + n_tiles:
                ex[0] = e
                rx[0] = Off[e] + (bx - seen[0]) * B
            seen[0] = seen[0] + n_tiles

    @T.macro
    def stage(Ws, ty, tx, W, e, n, k, first):
        Ws[ty, tx] = T.if_then_else(n < F and k < K, W[e, first + T.min(n, F - 1), T.min(k, K - 1)],
                                    T.float32(0))

    @T.prim_func
    def gmm(X: T.Buffer((R, K), "float32"), W: T.Buffer((E, N, K), "float32"), Off: T.Buffer((E + 1,), "int64"),
            Bias: T.Buffer((N,), "float32"), Y: T.Buffer((R, F), "float32")):
        for bx in T.thread_binding(R // B + E, thread="blockIdx.x"):
            for by in T.thread_binding((F + B - 1) // B, thread="blockIdx.y"):
                for ty in T.thread_binding(B, thread="threadIdx.y"):
                    for tx in T.thread_binding(B, thread="threadIdx.x"):
                        Xs = T.alloc_buffer((B, B), "float32", scope="shared")
                        Gs = T.alloc_buffer((B, B), "float32", scope="shared")
                        Us = T.alloc_buffer((B, B), "float32", scope="shared")
                        ex = T.alloc_buffer((1,), "int32", scope="local")
                        rx = T.alloc_buffer((1,), "int64", scope="local")
                        acc = T.alloc_buffer((2,), "float32", scope="local")
                        tile_of(Off, bx, ex, rx)
                        if ex[0] < E:
                            end = Off[ex[0] + 1]
                            acc[0] = T.float32(0)
                            acc[1] = T.float32(0)
                            for kt in range((K + B - 1) // B):
                                k = kt * B + tx
                                Xs[ty, tx] = T.if_then_else(rx[0] + ty < end and k < K,
                                                            X[T.min(rx[0] + ty, R - 1), T.min(k, K - 1)],
                                                            T.float32(0))
                                n = by * B + ty
                                stage(Gs, ty, tx, W, ex[0], n, k, 0)
                                if swiglu:
                                    stage(Us, ty, tx, W, ex[0], n, k, F)
                                T.tvm_storage_sync("shared")
                                for kk in range(B):
                                    acc[0] = acc[0] + Xs[ty, kk] * Gs[tx, kk]
                                    if swiglu:
                                        acc[1] = acc[1] + Xs[ty, kk] * Us[tx, kk]
                                T.tvm_storage_sync("shared")
                            col = by * B + tx
                            if rx[0] + ty < end and col < F:
                                epilogue(Y, rx[0] + ty, col, acc[0], acc[1], Bias, F, swiglu)

    return no_alias(gmm)
