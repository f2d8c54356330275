"""Deliberately broken backends: each is the reference with one thing broken, and says which op and
which conformance check must catch it. The suite is only worth something if it fails every one.

Legend: T tokens, H hidden, E experts, K top-k, R = T*K rows, F output features."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from portable_moe.backends.base import BackendError, Executable, Support
from portable_moe.backends.reference import ReferenceBackend
from portable_moe.ir import meanings as ref


class FaultyExecutable(Executable):
    differentiable = True

    def __init__(self, graph, device, overrides: Mapping):
        super().__init__(graph, device)
        self.overrides = overrides

    def run(self, inputs: Mapping, params: Mapping) -> list:
        env = dict(inputs) | dict(params)
        for node in self.graph.nodes:
            fn = self.overrides.get(node.op, ref.OPS[node.op])
            result = fn(*[None if i is None else env[i] for i in node.inputs], **node.attrs)
            env.update((v.name, r) for v, r in zip(node.outputs, result if isinstance(result, tuple) else (result,)))
        return [env[o] for o in self.graph.outputs]


class FaultyBackend(ReferenceBackend):
    """The reference with some ops replaced; `expect` = (op, check) the suite must report."""

    def __init__(self, name: str, overrides: Mapping, expect: tuple[str, str], dtype: str = "float32"):
        self.name, self.overrides, self.expect, self.dtype = name, dict(overrides), expect, dtype

    def compile(self, graph, device, options):
        self.require_supported(graph, device)
        return FaultyExecutable(graph, device, self.overrides)


# ----- the faults -----

def drops_expert(x, weight, offsets):
    y = ref.grouped_matmul(x, weight, offsets)
    a, b = int(offsets[1]), int(offsets[2])
    return torch.cat([y[:a], torch.zeros_like(y[a:b]), y[b:]])          # expert 1's tokens vanish


def accumulates_in_bf16(x, weight, offsets):
    bounds = offsets.tolist()
    pieces = [F.linear(x[a:b].bfloat16(), w.bfloat16()).to(x.dtype) for a, b, w in
              zip(bounds, bounds[1:], weight.unbind(0))]
    return torch.cat(pieces) if pieces else x.new_zeros(0, weight.shape[1])


def segment_off_by_one(x, weight, offsets):
    shifted = offsets.clone()
    shifted[1:-1] = (offsets[1:-1] + 1).clamp(max=int(offsets[-1]))      # each segment's first row -> previous expert
    return ref.grouped_matmul(x, weight, torch.cummax(shifted, 0).values)


def ties_to_higher_index(x, weight, bias=None, score_bias=None, **attrs):
    """Flips the expert order, so the reference's lower-index tie rule picks the higher index."""
    flip = torch.arange(weight.shape[0] - 1, -1, -1)
    sb = None if score_bias is None else score_bias[flip]
    b = None if bias is None else bias[flip]
    w_TK, idx_TK, logits = ref.router(x, weight[flip], b, sb, **attrs)
    return w_TK, flip[idx_TK], logits[..., flip]


def skips_renormalisation(x, weight, bias=None, score_bias=None, **attrs):
    return ref.router(x, weight, bias, score_bias, **(attrs | {"normalize": False}))


def writes_one_less(y, order, weights):
    full = ref.combine(y, order, weights)
    out = torch.empty_like(full).reshape(-1)                               # uninitialised memory
    flat = full.reshape(-1)
    if flat.numel():
        out[:-1] = flat[:-1]
    return out.reshape(full.shape)


def nan_to_zero(x):
    return torch.nan_to_num(ref.swiglu(x), nan=0.0)


class WrongWeightGrad(torch.autograd.Function):
    """Right forward; the weight gradient of expert 0 is 10% too large."""

    @staticmethod
    def forward(ctx, x, weight, offsets):
        ctx.save_for_backward(x, weight, offsets)
        return ref.grouped_matmul(x, weight, offsets)

    @staticmethod
    def backward(ctx, grad):
        x, weight, offsets = ctx.saved_tensors
        with torch.enable_grad():
            xl, wl = x.detach().requires_grad_(), weight.detach().requires_grad_()
            gx, gw = torch.autograd.grad(ref.grouped_matmul(xl, wl, offsets), (xl, wl), grad, allow_unused=True)
        gw = torch.zeros_like(weight) if gw is None else gw.clone()
        gw[0] *= 1.1
        return gx, gw, None


def wrong_weight_grad(x, weight, offsets):
    return WrongWeightGrad.apply(x, weight, offsets)


def stale_weights():
    """Keeps a copy of the weight keyed by address, shape and version (the TVM defect of issue 21)."""
    kept = {}

    def gmm(x, weight, offsets):
        key = (weight.data_ptr(), tuple(weight.shape), tuple(weight.stride()), weight._version)
        return ref.grouped_matmul(x, kept.setdefault(key, weight.detach().clone()), offsets)

    return gmm


def stale_by_identity():
    """Keeps a copy of the weight keyed by the tensor object (held, so its id is never reused) and its version:
    ONNX Runtime's defect until 2026-12-05, as `w.data = ...` gives the tensor new storage and leaves both alone."""
    kept = {}

    def gmm(x, weight, offsets):
        _, copy = kept.setdefault((id(weight), weight._version), (weight, weight.detach().clone()))
        return ref.grouped_matmul(x, copy, offsets)

    return gmm


def faulty_backends() -> list[FaultyBackend]:
    return [
        FaultyBackend("faulty-drops-expert", {"grouped_matmul": drops_expert}, ("grouped_matmul", "values")),
        FaultyBackend("faulty-bf16-accumulation", {"grouped_matmul": accumulates_in_bf16},
                      ("grouped_matmul", "values")),
        FaultyBackend("faulty-ties", {"router": ties_to_higher_index}, ("router", "routing")),
        FaultyBackend("faulty-no-renorm", {"router": skips_renormalisation}, ("router", "values")),
        FaultyBackend("faulty-one-short", {"combine": writes_one_less}, ("combine", "written")),
        FaultyBackend("faulty-nan-to-zero", {"swiglu": nan_to_zero}, ("swiglu", "nan-propagation")),
        FaultyBackend("faulty-segment-boundary", {"grouped_matmul": segment_off_by_one}, ("grouped_matmul", "values")),
        FaultyBackend("faulty-weight-grad", {"grouped_matmul": wrong_weight_grad}, ("grouped_matmul", "backward")),
        FaultyBackend("faulty-stale-weights", {"grouped_matmul": stale_weights()},
                      ("grouped_matmul", "weights-changed")),
        FaultyBackend("faulty-stale-by-identity", {"grouped_matmul": stale_by_identity()},
                      ("grouped_matmul", "weights-changed")),
    ]


# ----- backends whose declarations lie -----

class CrashesOnRefusal(ReferenceBackend):
    """Declines swiglu but compile() crashes instead of raising BackendError."""

    name = "faulty-crash-on-refusal"

    def support(self, device):
        s = super().support(device)
        return Support({op: d for op, d in s.ops.items() if op != "swiglu"}, {"swiglu": "not written yet"})

    def compile(self, graph, device, options):
        if "swiglu" in graph.ops():
            raise KeyError("swiglu")
        return super().compile(graph, device, options)


class RefusesCleanly(CrashesOnRefusal):
    name = "refuses-cleanly"

    def compile(self, graph, device, options):
        return ReferenceBackend.compile(self, graph, device, options)


class ClaimsButRefuses(ReferenceBackend):
    """Declares everything, then refuses swiglu at compile time."""

    name = "faulty-claims-swiglu"

    def compile(self, graph, device, options):
        if "swiglu" in graph.ops():
            raise BackendError("swiglu: no kernel")
        return super().compile(graph, device, options)


class Unavailable(ReferenceBackend):
    name = "unavailable-here"

    def availability(self, device):
        return "needs a device this machine lacks"
