"""The checks, each named in failures: structure (outputs, shape, dtype), inputs-intact (run() must
not write into its inputs or params), written (no NaN where the float64 reference is finite: outputs
run with torch's uninitialised memory filled with NaN, so an element a backend never writes shows up),
nan-propagation (NaN/Inf in the reference must come out NaN/Inf), values (element-wise bound),
global (DeepGEMM's relative-error metric), routing (expert indices equal to the reference's), exact
(other integer outputs), determinism (same bits twice), backward (gradients against float64 autograd).

Tolerances come from portable_moe.runtime.tolerance (shared with shadow validation; see there for
where the numbers come from). The element-wise absolute term is max(atol, rtol * rms(want)): the
rounding error of a reduction grows with the size of its terms, i.e. with the typical magnitude of
the result (its rms), not with the element itself, so an element that cancels to ~0 still carries
~rtol * rms of error (measured here: float16 weight gradients over 65 rows, 2-3% off at elements
ten times smaller than the rms). A real bug (a wrong row, a dropped expert, a bfloat16 accumulation
in a float32 op) moves elements by a sizeable fraction of the rms and stays far outside the bound.
Whole layers and models (a chain of rounded ops) and gradients (forward and backward reductions)
use the bound times LOOSEN[kind], measured on the reference itself in each dtype; where even the
reference run in the same dtype misses that bound by f (ill-conditioned values), it is widened to 2f
for that tensor and the widening is recorded in the report (never for single-op forward outputs).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from ..ir.meanings import TORCH_DTYPES, run_graph
from ..runtime.tolerance import TOLERANCES, Tolerance, excess, global_error
from .sample import Sample

# A model chains ~20 rounded ops per layer; a gradient chains the forward and backward reductions.
LOOSEN = {"op": 1.0, "layer": 2.0, "model": 8.0, "grad": 4.0}
# attention is a composite op: in its meaning q and k are RMS-normalised and rounded to the dtype twice
# each (the normalised value, then times the weight) before the score products; on the reference itself
# in float16/bfloat16 that measured up to 1.34x the single-op bound (seeds 0-2, quick and full tiers).
OP_LOOSEN = {"attention": 2.0}


@dataclass
class Outcome:
    failures: list[tuple[str, str]] = field(default_factory=list)   # (check, message)
    errors: dict[str, dict] = field(default_factory=dict)           # value name -> measured errors
    notes: list[str] = field(default_factory=list)
    excluded_tokens: int = 0
    compared: int = 0             # output elements compared by value; 0 means the sample proved nothing
    compared_grads: int = 0       # gradient elements compared (they are zero where tokens are excluded)

    def fail(self, check: str, message: str):
        self.failures.append((check, message))


@contextmanager
def poisoned_memory():
    """torch.empty & co. return NaN-filled memory (ints: their max) while active."""
    import torch.utils.deterministic as det
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              det.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        det.fill_uninitialized_memory = before[2]


def reference(sample: Sample) -> tuple[list[torch.Tensor], dict]:
    """The float64 outputs and every intermediate value."""
    env: dict = {}
    with torch.no_grad():
        ins = {n: sample.tensors[n] for n in sample.input_names()}
        ps = {n: sample.tensors[n] for n in sample.param_names()}
        want = run_graph(sample.graph, ins, ps, env)
    return want, env


def tolerance_for(dtype: torch.dtype, want: torch.Tensor, k: float) -> Tolerance:
    tol = TOLERANCES[dtype]
    finite = want[torch.isfinite(want)]
    rms = float(finite.pow(2).mean().sqrt()) if finite.numel() else 0.0
    return replace(tol, rtol=tol.rtol * k, atol=k * max(tol.atol, tol.rtol * rms), global_err=tol.global_err * k * k)


def masked(t: torch.Tensor, keep) -> torch.Tensor:
    if keep is None:
        return t.reshape(-1)
    return t[keep.expand_as(t)] if t.dim() else (t.reshape(-1) if bool(keep) else t.reshape(-1)[:0])


def where(bad: torch.Tensor, got: torch.Tensor, want: torch.Tensor) -> str:
    """The first offending element: index, got, want."""
    idx = tuple(int(i) for i in bad.nonzero()[0]) if bad.dim() else ()
    return f"first at {list(idx)}: got {float(got[idx]):.6g}, want {float(want[idx]):.6g}"


def compare_float(out: Outcome, name: str, got: torch.Tensor, want: torch.Tensor, keep, loosen: float,
                  special: bool, check: str = "values"):
    g, w = got.detach().double().cpu(), want.detach().double()
    keep_full = torch.ones_like(w, dtype=torch.bool) if keep is None else keep.expand_as(w)
    if check == "backward":
        out.compared_grads += int(keep_full.sum())
    else:
        out.compared += int(keep_full.sum())
    unwritten = torch.isnan(g) & torch.isfinite(w) & keep_full
    lost = ~torch.isfinite(w) & keep_full & ((torch.isfinite(g)) | (torch.isinf(w) & (g != w) & ~torch.isnan(g)))
    if unwritten.any():
        what = "nan-propagation" if special else ("written" if check == "values" else check)
        out.fail(what, f"{name}: {int(unwritten.sum())} element(s) NaN where the reference is finite "
                       f"(unwritten or corrupted; NaN spread too far); {where(unwritten, g, w)}")
    if lost.any():
        out.fail("nan-propagation" if check == "values" else check,
                 f"{name}: {int(lost.sum())} NaN/Inf element(s) of the reference came out finite or different "
                 f"(must propagate); {where(lost, g, w)}")
    tol = tolerance_for(got.dtype, w[keep_full], loosen)
    both = keep_full & torch.isfinite(w) & torch.isfinite(g)
    worst, over = excess(g[both], w[both], tol)
    gerr = global_error(g[both], w[both])
    out.errors[name] = {"worst_ratio": worst, "over": over, "global": gerr,
                        "max_abs": float((g[both] - w[both]).abs().max()) if both.any() else 0.0,
                        "rtol": tol.rtol, "atol": tol.atol}
    if over:
        ratio = torch.zeros_like(w)
        ratio[both] = (g[both] - w[both]).abs() / (tol.atol + tol.rtol * w[both].abs())
        out.fail(check, f"{name}: {over} element(s) over the bound (worst {worst:.3g}x; rtol {tol.rtol:.3g}, "
                        f"atol {tol.atol:.3g}); {where(ratio > 1, g, w)}")
    elif gerr > tol.global_err and meaningful(w[both], got.dtype):
        out.fail("global" if check == "values" else check,
                 f"{name}: global relative error {gerr:.3g} > {tol.global_err:.3g}")


def meaningful(want: torch.Tensor, dtype: torch.dtype) -> bool:
    """The global metric compares directions: against a truth below the dtype's atol everywhere (a gradient
    that is zero in exact arithmetic, left as float64 rounding noise) it reads 1 for any noise, so it is
    skipped there; the element-wise bound still applies."""
    return want.numel() > 0 and float(want.abs().max()) > TOLERANCES[dtype].atol


def compare_int(out: Outcome, name: str, got: torch.Tensor, want: torch.Tensor, keep, routing: bool):
    g, w = got.detach().cpu().to(torch.int64), want
    keep_full = torch.ones_like(w, dtype=torch.bool) if keep is None else keep.expand_as(w)
    out.compared += int(keep_full.sum())
    bad = (g != w) & keep_full
    if bad.any():
        rows = int(bad.reshape(bad.shape[0], -1).any(-1).sum()) if bad.dim() > 1 else int(bad.sum())
        what = "routing" if routing else "exact"
        kind = "expert choices" if routing else "values"
        out.fail(what, f"{name}: {rows} token(s)/row(s) differ from the reference ({kind}); {where(bad, g, w)}")


def widening(same_dtype_ref, want: torch.Tensor, keep, dtype: torch.dtype, loosen: float) -> float:
    """2f where the reference run in the same dtype misses the bound by f > 1 (an ill-conditioned
    value: correct code cannot do better), else 1."""
    if same_dtype_ref is None or not same_dtype_ref.is_floating_point():
        return 1.0
    r, w = masked(same_dtype_ref.detach().double().cpu(), keep), masked(want, keep)
    both = torch.isfinite(r) & torch.isfinite(w)
    f, _ = excess(r[both], w[both], tolerance_for(dtype, w[both], loosen))
    return max(1.0, 2 * f) if math.isfinite(f) else 1.0


def compare_outputs(out: Outcome, sample: Sample, got: list, want: list, keep: list, same_dtype_ref=None):
    """Structure first (count, shape, dtype), then values per output. Layers and models (chains of
    rounded ops, with cancellations where the shared and routed experts add up) get their bound widened
    where the reference in the same dtype misses it (see widening); single ops never do."""
    names = sample.graph.outputs
    types = sample.graph.values()
    if len(got) != len(want):
        out.fail("structure", f"{len(got)} outputs, the graph has {len(want)} ({', '.join(names)})")
        return
    for i, (name, g, w, k) in enumerate(zip(names, got, want, keep)):
        expected = TORCH_DTYPES[types[name].type.dtype.value]
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != tuple(w.shape):
            out.fail("structure", f"{name}: shape {list(getattr(g, 'shape', []))}, reference {list(w.shape)}")
            continue
        if g.dtype != expected:
            out.fail("structure", f"{name}: dtype {g.dtype}, the graph says {expected}")
        if w.is_floating_point():
            loosen = LOOSEN[sample.kind] * OP_LOOSEN.get(sample.op, 1.0)
            widen = widening(same_dtype_ref[i], w, k, g.dtype, loosen) if same_dtype_ref else 1.0
            compare_float(out, name, g, w, k, loosen * widen, sample.special)
            if widen > 1:
                out.errors[name]["widened"] = widen
        else:
            producer = sample.graph.producers()[name]
            compare_int(out, name, g, w, k, routing=producer.op == "router")


def same_bits(a: list, b: list) -> list[str]:
    """Names of outputs whose two runs differ in any bit."""
    def raw(t):
        flat = t.detach().cpu().reshape(-1).clone()
        return flat.view(torch.uint8) if flat.numel() else torch.zeros(0, dtype=torch.uint8)
    return [i for i, (x, y) in enumerate(zip(a, b)) if x.shape != y.shape or not torch.equal(raw(x), raw(y))]


def cotangents(sample: Sample, want: list, keep: list) -> list:
    g = torch.Generator().manual_seed(sample.seed + 1)
    cots = []
    for w, k in zip(want, keep):
        if not w.is_floating_point():
            cots.append(None)
            continue
        c = torch.randn(w.shape, generator=g, dtype=torch.float64)
        cots.append(c if k is None else c * k.expand_as(c))
    return cots


def float64_grads(sample: Sample, cots: list) -> dict[str, torch.Tensor]:
    leaves = {n: t.clone().requires_grad_(t.is_floating_point()) for n, t in sample.tensors.items()}
    with torch.enable_grad():
        outs = run_graph(sample.graph, {n: leaves[n] for n in sample.input_names()},
                         {n: leaves[n] for n in sample.param_names()})
        return grads_of(outs, cots, leaves)


def grads_of(outs: list, cots: list, leaves: dict) -> dict[str, torch.Tensor]:
    pairs = [(o, c) for o, c in zip(outs, cots) if c is not None and o.requires_grad]
    wrt = {n: t for n, t in leaves.items() if t.requires_grad}
    if not pairs or not wrt:
        return {}
    loss = sum((o.double() * c.to(o.device)).sum() for o, c in pairs)
    got = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
    return {n: torch.zeros_like(t) if g is None else g for (n, t), g in zip(wrt.items(), got)}


def compare_grads(out: Outcome, got: dict, want: dict, kind: str, op: str = "", same_dtype_ref: dict | None = None):
    """Gradients against float64. Some are ill-conditioned (the router's through the top-k
    renormalisation: g_k - sum_j w_j g_j cancels, so one token's weight gradient can be off by a few
    percent in float16 with correct code); where the reference itself, run in the same dtype, misses
    the bound by a factor f, the bound for that tensor is widened to 2f, and the widening is recorded."""
    loosen = LOOSEN[kind] * LOOSEN["grad"] * OP_LOOSEN.get(op, 1.0)
    for name, w in want.items():
        g = got.get(name)
        if g is None or tuple(g.shape) != tuple(w.shape):
            out.fail("backward", f"d/d{name}: missing or shape {list(getattr(g, 'shape', []))} != {list(w.shape)}")
            continue
        widen = widening((same_dtype_ref or {}).get(name), w, None, g.dtype, loosen)
        compare_float(out, f"d/d{name}", g, w, None, loosen * widen, False, check="backward")
        if widen > 1:
            out.errors[f"d/d{name}"]["widened"] = widen
