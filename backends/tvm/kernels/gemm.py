"""Grouped GEMM kernels in TVMScript: y[offsets[e]:offsets[e+1]] = x[...] @ w[e] over expert segments.

Legend: R dispatched rows (symbolic), K in-features, N out-features, E experts, F = N/2 for the
SwiGLU epilogue. The CPU kernel takes the weight packed as [E, N/NB, K, NB] (each column block's
K x NB panel contiguous, so the inner loop is one FMA per vector lane and the panel streams), pads
each expert segment to tiles of MT rows and runs one parallel loop over (row tile, column block);
an MT x NB accumulator stays in vector registers. The GPU kernel tiles each expert segment into
BM-row blocks (as vLLM's moe_align_block_size does), stages x and w tiles in shared memory with
barriers, and binds one thread per output element of a BM x BN tile. Dense `linear` is the same
kernel with E = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T


@dataclass(frozen=True)
class CpuTile:
    """MT rows x NB columns of accumulators in vector registers; NC column blocks per parallel job (their
    weight panels stay in L2 while the expert's rows stream past them)."""

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
    """The GPU kernel's square tile: edge x edge output elements per work-group (one per thread), K
    staged edge at a time through shared memory."""

    edge: int = 16

    def __str__(self) -> str:
        return f"{self.edge}x{self.edge}"


def gmm_cpu(E: int, N: int, K: int, tile: CpuTile, swiglu: bool = False):
    """y = x @ w[e] (+ bias) per segment; with swiglu, y[:, f] = silu(g) * u for columns f, F + f of w.
    One parallel job per (column group, expert), experts fastest, so every thread sees every expert
    whatever the routing skew; inside a job the expert's rows pass MT at a time over NC weight panels."""
    F = N // 2 if swiglu else N
    tile = tile.fit(F)
    MT, NB, NC = tile.MT, tile.NB, tile.NC
    NBLK = F // (NB * NC)

    @T.macro
    def store(Y, r, n, g, u, Bias):
        if swiglu:
            Y[r, n] = (g + Bias[n]) / (T.float32(1) + T.exp(-(g + Bias[n]))) * (u + Bias[F + n])
        else:
            Y[r, n] = g + Bias[n]

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
                store(Y, r0 + m, n0 + n, acc[m, n], up[m, n], Bias)

    @T.prim_func
    def gmm(x: T.handle, w: T.handle, off: T.handle, b: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "gmm", "tirx.noalias": True})
        R = T.int64()
        X = T.match_buffer(x, (R, K), "float32")
        W = T.match_buffer(w, (E, N // NB, K, NB), "float32")
        Off = T.match_buffer(off, (E + 1,), "int64")
        Bias = T.match_buffer(b, (N,), "float32")
        Y = T.match_buffer(y, (R, F), "float32")
        acc = T.alloc_buffer((MT, NB), "float32", scope="local")
        up = T.alloc_buffer((MT, NB), "float32", scope="local")
        for job in T.parallel(E * NBLK):
            e = job % E
            full = (Off[e + 1] - Off[e]) // MT
            for t in range(full):
                for c in range(NC):
                    tile_rows(X, W, Y, Bias, acc, up, e, Off[e] + t * MT, (job // E * NC + c) * NB, MT)
            for m in range(Off[e] + full * MT, Off[e + 1]):
                for c in range(NC):
                    tile_rows(X, W, Y, Bias, acc, up, e, m, (job // E * NC + c) * NB, 1)

    return gmm


def gmm_gpu(E: int, N: int, K: int, tile: GpuTile, swiglu: bool = False):
    """Grid: (R // BM + E) row tiles x ceil(F / BN) column tiles; blocks past the last tile do nothing.
    Weight in its IR layout [E, N, K]. Threads load the shared tiles by (ty, tx), so BM = BN = BK."""
    F = N // 2 if swiglu else N
    BM = BN = BK = tile.edge
    KT = (K + BK - 1) // BK

    @T.macro
    def tile_of(Off, bx, ex, rx):
        """Finds the expert ex[0] and first row rx[0] of row tile bx; ex[0] = E when bx is past the end."""
        ex[0] = E
        rx[0] = T.int64(0)
        seen = T.alloc_buffer((1,), "int64", scope="local")
        seen[0] = T.int64(0)
        for e in range(E):
            n_tiles = (Off[e + 1] - Off[e] + BM - 1) // BM
            if ex[0] == E and bx < seen[0] + n_tiles:
                ex[0] = e
                rx[0] = Off[e] + (bx - seen[0]) * BM
            seen[0] = seen[0] + n_tiles

    @T.prim_func
    def gmm(x: T.handle, w: T.handle, off: T.handle, b: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "gmm", "tirx.noalias": True})
        R = T.int64()
        X = T.match_buffer(x, (R, K), "float32")
        W = T.match_buffer(w, (E, N, K), "float32")
        Off = T.match_buffer(off, (E + 1,), "int64")
        Bias = T.match_buffer(b, (N,), "float32")
        Y = T.match_buffer(y, (R, F), "float32")
        for bx in T.thread_binding(R // BM + E, thread="blockIdx.x"):
            for by in T.thread_binding((F + BN - 1) // BN, thread="blockIdx.y"):
                for ty in T.thread_binding(BM, thread="threadIdx.y"):
                    for tx in T.thread_binding(BN, thread="threadIdx.x"):
                        Xs = T.alloc_buffer((BM, BK), "float32", scope="shared")
                        Gs = T.alloc_buffer((BN, BK), "float32", scope="shared")
                        Us = T.alloc_buffer((BN, BK), "float32", scope="shared")
                        ex = T.alloc_buffer((1,), "int32", scope="local")
                        rx = T.alloc_buffer((1,), "int64", scope="local")
                        acc = T.alloc_buffer((2,), "float32", scope="local")
                        tile_of(Off, bx, ex, rx)
                        if ex[0] < E:
                            end = Off[ex[0] + 1]
                            acc[0] = T.float32(0)
                            acc[1] = T.float32(0)
                            for kt in range(KT):
                                k = kt * BK + tx
                                Xs[ty, tx] = T.if_then_else(rx[0] + ty < end and k < K,
                                                            X[T.min(rx[0] + ty, R - 1), T.min(k, K - 1)],
                                                            T.float32(0))
                                n = by * BN + ty
                                Gs[ty, tx] = T.if_then_else(n < F and k < K,
                                                            W[ex[0], T.min(n, F - 1), T.min(k, K - 1)],
                                                            T.float32(0))
                                if swiglu:
                                    Us[ty, tx] = T.if_then_else(n < F and k < K,
                                                                W[ex[0], F + T.min(n, F - 1), T.min(k, K - 1)],
                                                                T.float32(0))
                                T.tvm_storage_sync("shared")
                                for kk in range(BK):
                                    acc[0] = acc[0] + Xs[ty, kk] * Gs[tx, kk]
                                    if swiglu:
                                        acc[1] = acc[1] + Xs[ty, kk] * Us[tx, kk]
                                T.tvm_storage_sync("shared")
                            col = by * BN + tx
                            if rx[0] + ty < end and col < F:
                                if swiglu:
                                    g = acc[0] + Bias[col]
                                    Y[rx[0] + ty, col] = g / (T.float32(1) + T.exp(-g)) * (acc[1] + Bias[F + col])
                                else:
                                    Y[rx[0] + ty, col] = acc[0] + Bias[col]

    return gmm
