"""Timing one MoE layer's forward across backends, side by side (interleaved) in one run with two torch eager
baselines on the same device (written independently of the reference backend) and the device's
measured dense matmul rate, with a correctness guard against the eager result.

Legend: T tokens, H hidden, F expert FFN width, E experts, K experts per token (top-k),
R = T*K routed rows. The FLOPs counted are the expert GEMMs only: 2*T*K*(H*2F + F*H)."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from .. import registry
from ..backends.base import Backend
from ..backends.devices import Device
from ..ir import PortableMoeError
from ..ir.meanings import TORCH_DTYPES
from ..models import MoEConfig, build_moe_layer, init_params
from ..registry import BackendUnavailable
from ..runtime.compile import options_for
from ..runtime.partition import partition
from ..timing import side_by_side_ms, synchronize
from .eager import EAGER, eager_loop


class BenchError(PortableMoeError):
    """A benchmark request that cannot be run as given (bad shape, unknown backend, bad model)."""


# max |diff| allowed, relative to max |eager output|; fp32 sums of ~1000 terms drift ~1e-6 relative.
TOLERANCE = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 5e-2, "float64": 1e-9}
SLOW = {("triton", "cpu"): "runs in Triton's interpreter on the CPU (~1000x slower than compiled code); "
                           "ask for it with --backend triton"}
DEFAULT_SHAPES = ((1024, 1408, 16, 2, 2048), (512, 1792, 8, 2, 4096))   # (H, F, E, K, T) from FIELD-NOTES


@dataclass(frozen=True)
class Case:
    """One benchmarked layer: a model config (its MoE FFN) and a token count."""

    cfg: MoEConfig
    tokens: int

    @property
    def flops(self) -> int:
        c = self.cfg
        return 2 * self.tokens * c.top_k * (c.hidden * 2 * c.expert_ffn + c.expert_ffn * c.hidden)

    @property
    def label(self) -> str:
        c = self.cfg
        return f"{c.hidden}->{c.expert_ffn} E{c.experts} K{c.top_k} T{self.tokens}"


@dataclass
class Row:
    name: str
    kind: str                      # eager | backend
    status: str = "ran"            # ran | skipped: why | unavailable: why | failed: error
    compile_s: float | None = None
    times_ms: list[float] = field(default_factory=list)
    max_diff: float | None = None
    wrong: bool = False
    median_ms: float | None = None
    gflops: float | None = None
    vs_eager: float | None = None   # speed relative to the best eager variant (>1: faster)
    of_matmul: float | None = None  # fraction of the measured dense matmul rate
    placement: str = ""


@dataclass
class ShapeResult:
    label: str
    shape: dict
    flops: int
    matmul_gflops: float
    rows: list[Row]
    tolerance: float


def layer_case(hidden: int, ffn: int, experts: int, top_k: int, tokens: int, dtype: str) -> Case:
    try:
        cfg = MoEConfig(name=f"bench-{hidden}x{ffn}-e{experts}k{top_k}", hidden=hidden, expert_ffn=ffn,
                        experts=experts, top_k=top_k, dtype=dtype)
    except PortableMoeError as e:
        raise BenchError(f"layer shape {hidden},{ffn},{experts},{top_k}: {e}") from None
    return Case(cfg, tokens)


def parse_layer_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise BenchError(f"--layer-shape {text!r} must be four positive integers H,F,E,K (e.g. 1024,1408,16,2)")
    return values


def dense_matmuls(case: Case, device: Device) -> Callable[[], object]:
    """The layer's expert FLOPs as two dense matmuls ([R,H]x[H,2F], [R,F]x[F,H]), to time: the rate a
    perfect grouped GEMM would reach on this device."""
    c, dt = case.cfg, TORCH_DTYPES[case.cfg.dtype]
    g = torch.Generator().manual_seed(1)
    rows = case.tokens * c.top_k
    a = torch.randn(rows, c.hidden, generator=g).to(device.torch_device, dt)
    b = torch.randn(c.hidden, 2 * c.expert_ffn, generator=g).to(device.torch_device, dt)
    h = torch.randn(rows, c.expert_ffn, generator=g).to(device.torch_device, dt)
    d = torch.randn(c.expert_ffn, c.hidden, generator=g).to(device.torch_device, dt)
    return lambda: (a @ b, h @ d)


def backend_forward(backend: Backend, graph, params: dict, device: Device) -> tuple[Callable, str]:
    """Compiles the layer on the backend (nodes it lacks on the reference) and returns x -> y."""
    ranked = [(backend.name, backend)]
    if backend.name != "reference":
        ranked.append(("reference", registry.load("reference")))
    by_name = dict(ranked)
    segments = [(s, by_name[s.backend].compile(s.graph, device, options_for(by_name[s.backend], None)))
                for s in partition(graph, device, ranked)]

    def forward(x_TH: torch.Tensor) -> torch.Tensor:
        env = {"x": x_TH}
        for seg, exe in segments:
            g = seg.graph
            outs = exe.run({v.name: env[v.name] for v in g.inputs}, {v.name: params[v.name] for v in g.params})
            env.update(zip(g.outputs, outs))
        return env[graph.outputs[0]]

    on_ref = sum(len(s.graph.nodes) for s, _ in segments if s.backend != backend.name)
    return forward, f"{on_ref} node(s) on reference" if on_ref else ""


def finish(row: Row, out: torch.Tensor | None, expected: torch.Tensor, flops: int, tol: float):
    if out is not None:
        row.max_diff = (out.double() - expected.double()).abs().max().item() if out.shape == expected.shape \
            else float("inf")
        row.wrong = not row.max_diff <= tol * max(expected.double().abs().max().item(), 1e-30)
    if row.times_ms:
        row.median_ms = statistics.median(row.times_ms)
        row.gflops = flops / row.median_ms / 1e6


MATMUL = "dense matmul"


def bench_case(case: Case, device: Device, backends: list[tuple[str, Backend | BackendUnavailable]], repeat: int,
               params: dict | None = None, progress=print) -> ShapeResult:
    """Every variant compiled and checked first, then timed side by side (interleaved rounds), so that all
    of them, and the dense matmul rate, see the same machine load."""
    graph = build_moe_layer(case.cfg)
    params = {k: v.to(device.torch_device) for k, v in (params or init_params(graph, seed=0)).items()}
    dt = TORCH_DTYPES[case.cfg.dtype]
    x_TH = torch.randn(case.tokens, case.cfg.hidden, generator=torch.Generator().manual_seed(2)).to(
        device.torch_device, dt)
    tol = TOLERANCE.get(case.cfg.dtype, 5e-2)
    rows, calls, outs = [], {}, {}
    with torch.no_grad():
        expected = eager_loop(case.cfg, params, x_TH)
        for name, fn in EAGER.items():
            rows.append(Row(name, "eager"))
            calls[name] = lambda fn=fn: fn(case.cfg, params, x_TH)
            outs[name] = calls[name]()
        for name, backend in backends:
            row, call, outs[name] = prepare_backend(name, backend, graph, params, x_TH, device)
            rows.append(row)
            if call is None:
                progress(f"[{case.label}] {name}: {row.status}")
            else:
                calls[name] = call
        calls[MATMUL] = dense_matmuls(case, device)
        times = side_by_side_ms(calls, repeat, device)
    rate = case.flops / statistics.median(times.pop(MATMUL)) / 1e6
    for row in rows:
        if row.name in times and row.status == "ran":
            row.times_ms = times[row.name]
            finish(row, outs[row.name], expected, case.flops, tol)
            progress(f"[{case.label}] {row.name}: " + (f"compile {row.compile_s:.2f} s, " if row.compile_s else "")
                     + f"{row.median_ms:.2f} ms")
    progress(f"[{case.label}] {MATMUL}: {rate:.1f} GFLOP/s")
    best_eager = min(r.median_ms for r in rows if r.kind == "eager")
    for r in rows:
        if r.median_ms:
            r.vs_eager, r.of_matmul = best_eager / r.median_ms, r.gflops / rate
    shape = {"hidden": case.cfg.hidden, "ffn": case.cfg.expert_ffn, "experts": case.cfg.experts,
             "top_k": case.cfg.top_k, "tokens": case.tokens, "dtype": case.cfg.dtype, "model": case.cfg.name}
    return ShapeResult(case.label, shape, case.flops, rate, rows, tol)


def failure(e: Exception) -> str:
    return f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def prepare_backend(name, backend, graph, params, x_TH, device) -> tuple[Row, Callable | None, torch.Tensor | None]:
    """(row, the call to time or None when it cannot run, its first output): compiled, run once (some
    backends build their session on the first call: that counts as compile)."""
    row = Row(name, "backend")
    if isinstance(backend, BackendUnavailable):
        row.status = f"unavailable: {backend.reason}"
        return row, None, None
    reason = "compiles only, never executes" if not backend.executes else backend.availability(device)
    if reason:
        row.status = f"unavailable: {reason}"
        return row, None, None
    try:
        t0 = time.perf_counter()
        forward, row.placement = backend_forward(backend, graph, params, device)
        first = forward(x_TH)
        synchronize(device)
        row.compile_s = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - one backend's crash is a finding in the table, not the end of the run
        row.status = failure(e)
        return row, None, None

    def call():
        if row.status == "ran":
            try:
                forward(x_TH)
            except Exception as e:  # noqa: BLE001 - as above
                row.status = failure(e)
    return row, call, first


def choose_backends(requested: list[str] | None,
                    device: Device) -> tuple[list[tuple[str, Backend | BackendUnavailable]], list[str]]:
    """The backends to time and the notes on the ones skipped as too slow for this device."""
    explicit = [b for b in (requested or ["all"]) if b != "all"]
    names = registry.backend_names() if not requested or "all" in requested else []
    names += [n for n in explicit if n not in names]
    chosen, notes = [], []
    for n in names:
        slow = SLOW.get((n, device.kind))
        if slow and n not in explicit:
            notes.append(f"{n} skipped on {device.id}: {slow}")
            continue
        chosen.append((n, registry.load_for_listing(n)))     # unknown names raise RegistryError listing the known ones
    return chosen, notes


def run_bench(cases: list[Case], device: Device, backends: list[str] | None = None, repeat: int = 5,
              progress: Callable[[str], None] | None = None) -> dict:
    if repeat < 1:
        raise BenchError(f"--repeat {repeat} must be at least 1")
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    chosen, notes = choose_backends(backends, device)
    for note in notes:
        progress(note)
    shapes = [bench_case(c, device, chosen, repeat, progress=progress) for c in cases]
    return {"format": "portable_moe.bench", "version": 1, "device": device.to_dict(), "repeat": repeat,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "skipped": notes,
            "shapes": [asdict(s) for s in shapes]}


def flagged(report: dict) -> list[str]:
    """'shape: backend' for every row that ran and was wrong, or failed."""
    return [f"{s['label']}: {r['name']} ({r['status'] if r['status'] != 'ran' else 'WRONG'})"
            for s in report["shapes"] for r in s["rows"] if r["wrong"] or r["status"].startswith("failed")]
