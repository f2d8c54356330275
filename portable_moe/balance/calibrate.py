"""Measure a device's expert throughput (tokens/s) with a GEMM micro-benchmark."""

from __future__ import annotations

from collections.abc import Callable

from ..timing import synchronize, time_ms
from .cluster import BalanceError


def calibrate(
    run_gemm: Callable[[], object],
    tokens: int,
    hidden: int | None = None,
    ffn: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    sync: Callable[[], object] | None = None,
) -> float:
    """Time `run_gemm()` (one expert's work on `tokens` tokens) and return tokens per second (best of
    `repeats`). hidden/ffn are recorded for the caller's bookkeeping only; `sync` waits for the device."""
    if tokens <= 0 or repeats <= 0:
        raise BalanceError(
            f"calibrate needs tokens > 0 and repeats > 0, got tokens={tokens}, repeats={repeats}"
        )
    step = run_gemm if sync is None else lambda: (run_gemm(), sync())
    for _ in range(warmup):
        step()
    return tokens / max(min(time_ms(step, repeats, warm_up=False)) / 1e3, 1e-9)


def calibrate_torch(
    device: str = "cpu", dtype=None, hidden: int = 1024, ffn: int = 512, tokens: int = 256, repeats: int = 5
) -> float:
    """Tokens/s of one expert (x[T,H] @ w1[H,2F], silu(gate) * up, @ w2[F,H]) in torch on `device`."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, hidden, generator=g).to(device, dtype)
    w1 = (torch.randn(hidden, 2 * ffn, generator=g) / hidden**0.5).to(device, dtype)
    w2 = (torch.randn(ffn, hidden, generator=g) / ffn**0.5).to(device, dtype)

    def run():
        h = x @ w1
        return (torch.nn.functional.silu(h[:, :ffn]) * h[:, ffn:]) @ w2

    with torch.no_grad():
        return calibrate(run, tokens, hidden, ffn, repeats=repeats, sync=lambda: synchronize(device))


def calibrate_backend(device: str = "cpu", backend: str | None = None, dtype: str = "float32", hidden: int = 1024,
                      ffn: int = 512, tokens: int = 256, repeats: int = 5) -> float:
    """Tokens/s of one expert (gate/up grouped GEMM, SwiGLU, down grouped GEMM) compiled for `device` by the
    backend selected for it (or `backend`): the throughput the balancer should plan with."""
    import torch

    from ..ir import DType
    from ..ir.meanings import TORCH_DTYPES
    from ..models import expert_ffn_graph
    from ..runtime import compile

    model = compile(expert_ffn_graph(hidden, ffn, DType(dtype), 1), {}, device=device, backend=backend)
    g = torch.Generator().manual_seed(0)
    dt = TORCH_DTYPES[dtype]
    inputs = (torch.randn(tokens, hidden, generator=g).to(dt), (torch.randn(1, 2 * ffn, hidden, generator=g)
              / hidden**0.5).to(dt), (torch.randn(1, hidden, ffn, generator=g) / ffn**0.5).to(dt),
              torch.tensor([0, tokens]))
    with torch.no_grad():
        return calibrate(lambda: model(*inputs), tokens, hidden, ffn, repeats=repeats,
                         sync=lambda: synchronize(device))
