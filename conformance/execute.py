"""Runs one sample on one backend and device: compile (or check the refusal), forward twice with
poisoned memory, compare with the float64 reference, then gradients through a CompiledModel (autograd
through the executable when it is differentiable, else the runtime's reference fallback).

Executables are compiled once per graph signature (the graph's JSON: ops, attributes, types, never
values) and reused by every sample of that graph on the same backend and device, as a user reuses one.
A sample that compared nothing (every token excluded as routing-ambiguous, or an empty output) is no
evidence: run_case draws it again with another seed, and after DRAWS tries calls it inconclusive."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import fields

import torch

from .. import registry
from ..backends.base import Backend, BackendError
from ..backends.devices import Device
from ..ir import IRError, to_json
from ..runtime.compile import options_for
from ..runtime.module import CompiledModel
from ..runtime.partition import Segment, partition
from ..runtime.select import Selection
from . import checks, weight_updates
from .result import CaseResult
from .routing import keep_masks, router_ambiguity
from .sample import Sample


def short_error(e: BaseException) -> str:
    tail = traceback.format_exception(e)[-3:]
    return f"{type(e).__name__}: {e}".strip() + " | " + " ".join(s.strip().replace("\n", " ") for s in tail)[-400:]


def suite_options(backend: Backend):
    """The backend's default options, on one thread where it has a `threads` option: the samples are tiny,
    and threads only spin waiting on each other (onnxruntime: 2x the CPU time on 2 shared cores)."""
    threads = {"threads": 1} if "threads" in {f.name for f in fields(backend.Options)} else None
    return options_for(backend, threads)


def refusal(backend: Backend, device: Device, sample: Sample, reason: str) -> tuple[str, list]:
    """A declined op must make compile() raise BackendError: anything else is a failure."""
    try:
        backend.compile(sample.graph, device, suite_options(backend))
    except BackendError:
        return "declined", []
    except Exception as e:  # noqa: BLE001 - a crash instead of a clean refusal is the finding
        return "failed", [("declaration", f"declined ({reason}) but compile() crashed instead of raising "
                                          f"BackendError: {short_error(e)}")]
    return "failed", [("declaration", f"declared unsupported ({reason}) yet compile() accepted the graph")]


DRAWS = 4


def segments_for(backend: Backend, device: Device, sample: Sample, compiled: dict | None = None) -> tuple[list,
                                                                                                        list[str]]:
    """segments() once per graph signature: `compiled` (signature -> result or the exception) is the cache."""
    if compiled is None:
        return segments(backend, device, sample)
    key = to_json(sample.graph)
    if key not in compiled:
        try:
            compiled[key] = segments(backend, device, sample)
        except Exception as e:  # noqa: BLE001 - replayed for every sample of this graph, as a fresh compile would
            compiled[key] = e
    if isinstance(compiled[key], Exception):
        raise compiled[key]
    return compiled[key]


def segments(backend: Backend, device: Device, sample: Sample) -> tuple[list, list[str]]:
    """(segment, executable) pairs: the whole graph on the backend for op samples; partitioned with the
    reference as fallback for layer/model samples. Raises BackendError/IRError when it cannot."""
    if sample.kind == "op":
        exe = backend.compile(sample.graph, device, suite_options(backend))
        return [(Segment(backend.name, sample.graph, {}), exe)], []
    ranked = [(backend.name, backend)]
    ref = registry.load("reference")
    if backend.name != "reference" and ref.availability(device) is None:
        ranked.append(("reference", ref))
    segs = partition(sample.graph, device, ranked)
    by_name = dict(ranked)
    out = [(s, by_name[s.backend].compile(s.graph, device, suite_options(by_name[s.backend]))) for s in segs]
    where = {}
    for s, _ in out:
        where[s.backend] = where.get(s.backend, 0) + len(s.graph.nodes)
    return out, [f"ran on: {', '.join(f'{b} {n} node(s)' for b, n in where.items())}"]


def as_list(result) -> list:
    return list(result) if isinstance(result, tuple | list) else [result]


def forward(model: CompiledModel, inputs: dict) -> list:
    """Op samples call the executable itself, so the suite (not the runtime's guard) judges the outputs."""
    with torch.no_grad(), checks.poisoned_memory():
        if len(model.segments) == 1 and model.segments[0][0].graph is model.graph:
            return [o.clone() for o in model.segments[0][1].run(inputs, model.named_graph_params())]
        return [o.clone() for o in as_list(model(**inputs))]


def backward(model: CompiledModel, sample: Sample, inputs: dict, cots: list) -> dict:
    leaves = {n: t.detach().requires_grad_(t.is_floating_point()) for n, t in inputs.items()}
    with torch.enable_grad():
        outs = as_list(model(**leaves))
        return checks.grads_of(outs, cots, leaves | model.named_graph_params())


def reference_model(sample: Sample, device: Device, params: dict) -> CompiledModel:
    """The reference in the sample's dtype: how far correct code gets in that precision."""
    ref = registry.load("reference")
    exe = ref.compile(sample.graph, device, suite_options(ref))
    selection = Selection(device, sample.dtype, "conformance", ["reference"])
    return CompiledModel(sample.graph, params, selection, [(Segment("reference", sample.graph, {}), exe)])


def run_case(backend: Backend, device: Device, sample: Sample, declined: str | None, compiled: dict | None,
             redraw: Callable[[int], Sample]) -> CaseResult:
    """run_sample, drawing the sample again (redraw(attempt) -> a new sample of the same case) while its
    comparison covers nothing; after DRAWS draws that compared nothing the case is inconclusive."""
    seconds, empty_draws = 0.0, []
    for attempt in range(DRAWS):
        r = run_sample(backend, device, sample, declined, compiled)
        seconds += r.seconds
        why = vacuous(r, sample)
        if not why:
            break
        empty_draws.append(f"seed {sample.seed}: {why}")
        if attempt + 1 < DRAWS:
            sample = redraw(attempt + 1)
    r.seconds, r.draws = seconds, attempt + 1
    if why:
        r.status, r.reason = "inconclusive", f"compared nothing in {DRAWS} draws ({'; '.join(empty_draws)})"
    elif empty_draws:
        r.notes.append(f"drawn {r.draws} times; compared nothing before ({'; '.join(empty_draws)})")
    return r


def vacuous(r: CaseResult, sample: Sample) -> str:
    """Why a passed sample proves nothing ('' when it compared something, or is empty on purpose)."""
    if r.status != "passed" or r.compared or sample.empty:
        return ""
    if r.excluded_tokens:
        return f"all {r.excluded_tokens} token(s) excluded as routing-ambiguous"
    return "the outputs are empty"


def run_sample(backend: Backend, device: Device, sample: Sample, declined: str | None,
               compiled: dict | None = None) -> CaseResult:
    start = time.perf_counter()
    r = CaseResult(backend.name, device.id, sample.dtype.value, sample.op, sample.name, sample.seed, "passed")
    if declined:
        r.status, r.failures = refusal(backend, device, sample, declined)
        r.reason = declined
    else:
        try:
            check(backend, device, sample, r, compiled)
        except Exception as e:  # noqa: BLE001 - any crash is a failed case, reported with the check that hit it
            r.failures.append(("run", short_error(e)))
        r.status = "failed" if r.failures else r.status
    r.seconds = time.perf_counter() - start
    return r


def check(backend: Backend, device: Device, sample: Sample, r: CaseResult, compiled: dict | None = None):
    try:
        segments, notes = segments_for(backend, device, sample, compiled)
    except (BackendError, IRError) as e:
        if sample.kind == "op":
            r.failures.append(("compile", f"declared supported, but compile() refused: {e}"))
        else:
            r.status, r.reason = "declined", f"cannot place the model on {backend.name}: {e}"
        return
    except Exception as e:  # noqa: BLE001
        r.failures.append(("compile", f"compile() crashed: {short_error(e)}"))
        return
    r.notes += notes
    if sample.kind != "op" and not any(s.backend == backend.name for s, _ in segments):
        r.status, r.reason = "declined", f"no node of this model runs on {backend.name}"
        return
    try:
        want, env = checks.reference(sample)
        keep, r.excluded_tokens = keep_masks(sample.kind, sample.graph, want,
                                             router_ambiguity(sample.graph, env, sample.dtype))
    except Exception as e:  # noqa: BLE001 - the oracle itself fails: say so, do not blame the backend
        r.failures.append(("reference", f"the float64 reference (or the routing analysis of its values) fails "
                                        f"on this sample: {short_error(e)}"))
        return
    inputs, params = sample.for_backend(device.torch_device)
    selection = Selection(device, sample.dtype, "conformance", [backend.name])
    model = CompiledModel(sample.graph, params, selection, segments)
    out = checks.Outcome(excluded_tokens=r.excluded_tokens)
    before = {k: v.clone() for k, v in (inputs | params).items()}
    first = forward(model, inputs)
    changed = [k for k, v in (inputs | params).items() if not torch.equal(v.nan_to_num(), before[k].nan_to_num())]
    if changed:
        out.fail("inputs-intact", f"run() modified its input(s)/param(s) in place: {', '.join(changed)}")
    same = None
    if sample.kind != "op":
        same = first if backend.name == "reference" else forward(reference_model(sample, device, params), inputs)
    checks.compare_outputs(out, sample, first, want, keep, same)
    if backend.deterministic:
        differ = checks.same_bits(first, forward(model, inputs))
        if differ:
            names = [sample.graph.outputs[i] for i in differ]
            out.fail("determinism", f"two runs on the same inputs differ in {', '.join(names)} "
                                    f"(the backend declares itself deterministic)")
        key = ("weights-changed", id(segments))
        if not out.failures and (compiled is None or key not in compiled):
            weight_updates.check(out, segments, inputs, params)     # a property of the executable: once each
            if compiled is not None:
                compiled[key] = True
    else:
        out.notes.append("determinism not checked: the backend declares itself non-deterministic")
    if sample.backward and not out.failures:
        cots = checks.cotangents(sample, want, keep)
        got = backward(model, sample, inputs, cots)
        same_g = got if backend.name == "reference" else backward(reference_model(sample, device, params), sample,
                                                                  inputs, cots)
        checks.compare_grads(out, got, checks.float64_grads(sample, cots), sample.kind, sample.op, same_g)
    r.failures += out.failures
    r.errors, r.notes = out.errors, r.notes + out.notes + sample.notes
    r.compared, r.compared_grads = out.compared, out.compared_grads
