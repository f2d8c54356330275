"""Timing one MoE layer's forward across backends, side by side (interleaved) in one run with the torch
baselines of eager.py on the same device (written independently of the reference backend), the device's
measured dense matmul rate and copy bandwidth (the time to read the selected experts' weights once: the
floor for decode), with a correctness guard against the eager result.

Legend: T tokens, H hidden, F expert FFN width, E experts, K experts per token (top-k),
R = T*K routed rows. The FLOPs counted are the expert GEMMs only: 2*T*K*(H*2F + F*H)."""

from __future__ import annotations

import statistics
import sys
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
from ..timing import side_by_side_ms, synchronize, timed_call
from .eager import EAGER, eager_loop, route


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
        model = "" if c.name.startswith("bench-") else f"{c.name} "
        return f"{model}{c.hidden}->{c.expert_ffn} E{c.experts} K{c.top_k} T{self.tokens}"


@dataclass
class Row:
    name: str
    kind: str                      # eager (a torch baseline) | backend
    status: str = "ran"            # ran | unavailable: why | failed: error (a backend's only)
    compile_s: float | None = None
    times_ms: list[float] = field(default_factory=list)
    max_diff: float | None = None
    wrong: bool = False
    median_ms: float | None = None
    gflops: float | None = None
    vs_eager: float | None = None   # speed relative to the best torch baseline (>1: faster)
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
    copy_gbs: float                 # device memory bandwidth measured by a copy in the same rounds
    experts_selected: int           # experts the router picked for at least one token
    weight_read_ms: float           # their weights read once at copy_gbs: no forward can be faster


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


MATMUL, COPY = "dense matmul", "copy"
COPY_BYTES = 1 << 30     # at most this much of the expert weights is copied to measure the bandwidth


def copy_call(params: dict) -> tuple[Callable, int]:
    """A copy of (a slice of) the gate_up weights into a buffer allocated once (a fresh allocation would time
    the CPU's page faults), and the bytes it reads and writes."""
    w = params["experts.gate_up"].reshape(-1)
    src = w[: min(w.numel(), COPY_BYTES // w.element_size())]
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src), 2 * src.numel() * src.element_size()


def bench_case(case: Case, device: Device, backends: list[tuple[str, Backend | BackendUnavailable]], repeat: int,
               params: dict | None = None, progress=print) -> ShapeResult:
    """Every variant compiled and checked first, then timed side by side (interleaved rounds), so that all
    of them, the dense matmul rate and the copy bandwidth see the same machine load."""
    c = case.cfg
    graph = build_moe_layer(c)
    params = {k: v.to(device.torch_device) for k, v in (params or init_params(graph, seed=0)).items()}
    dt = TORCH_DTYPES[c.dtype]
    x_TH = torch.randn(case.tokens, c.hidden, generator=torch.Generator().manual_seed(2)).to(device.torch_device, dt)
    tol = TOLERANCE.get(c.dtype, 5e-2)
    rows, calls, outs = [], {}, {}
    with torch.no_grad():
        expected = eager_loop(c, params, x_TH)
        selected = route(c, params, x_TH)[1].unique().numel()
        prepared = [prepare_baseline(name, make, c, params, x_TH, device) for name, make in EAGER.items()]
        prepared += [prepare_backend(name, backend, graph, params, x_TH, device) for name, backend in backends]
        for row, call, first in prepared:
            rows.append(row)
            outs[row.name] = first
            if call is None:
                progress(f"[{case.label}] {row.name}: {row.status}")
            else:
                calls[row.name] = call
        calls[MATMUL] = dense_matmuls(case, device)
        calls[COPY], copy_bytes = copy_call(params)
        times = side_by_side_ms(calls, repeat, device)
    rate = case.flops / statistics.median(times.pop(MATMUL)) / 1e6
    copy_gbs = copy_bytes / statistics.median(times.pop(COPY)) / 1e6
    for row in rows:
        if row.name in times and row.status == "ran":
            row.times_ms = times[row.name]
            finish(row, outs[row.name], expected, case.flops, tol)
            progress(f"[{case.label}] {row.name}: " + (f"compile {row.compile_s:.2f} s, " if row.compile_s else "")
                     + f"{row.median_ms:.3f} ms")
    progress(f"[{case.label}] {MATMUL}: {rate:.1f} GFLOP/s; {COPY}: {copy_gbs:.0f} GB/s")
    best_eager = min((r.median_ms for r in rows if r.kind == "eager" and r.median_ms), default=None)
    for r in rows:
        if r.median_ms:
            r.vs_eager, r.of_matmul = (best_eager / r.median_ms if best_eager else None), r.gflops / rate
    shape = {"hidden": c.hidden, "ffn": c.expert_ffn, "experts": c.experts, "top_k": c.top_k, "tokens": case.tokens,
             "dtype": c.dtype, "model": c.name}
    weight_read_ms = selected * 3 * c.hidden * c.expert_ffn * dt.itemsize / copy_gbs / 1e6
    return ShapeResult(case.label, shape, case.flops, rate, rows, tol, copy_gbs, selected, weight_read_ms)


def error_text(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def guarded(row: Row, fn: Callable, verdict: str) -> Callable:
    """fn, run only while the row still stands; an error ends the row with `verdict: error`."""
    def call():
        if row.status == "ran":
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - one variant's crash is a finding in the table, not the end of the run
                row.status = f"{verdict}: {error_text(e)}"
    return call


def prepare_baseline(name, make, cfg, params, x_TH, device) -> tuple[Row, Callable | None, torch.Tensor | None]:
    """(row, the call to time or None, its first output). A baseline this torch, transformers, dtype or shape
    cannot run is a note in the table ('unavailable'), never a failure of the run."""
    row = Row(name, "eager")
    try:
        forward = make(cfg, params)
        first = forward(x_TH)
        synchronize(device)
    except Exception as e:  # noqa: BLE001 - as above
        row.status = f"unavailable: {error_text(e)}"
        return row, None, None
    return row, guarded(row, lambda: forward(x_TH), "unavailable"), first


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
    def compile_and_run():
        forward, placement = backend_forward(backend, graph, params, device)
        return forward, placement, forward(x_TH)

    try:
        (forward, row.placement, first), compile_ms = timed_call(compile_and_run, device)
        row.compile_s = compile_ms / 1e3
    except Exception as e:  # noqa: BLE001 - as above
        row.status = f"failed: {error_text(e)}"
        return row, None, None
    return row, guarded(row, lambda: forward(x_TH), "failed"), first


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
