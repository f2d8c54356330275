"""The executable users hold: a torch.nn.Module over a partitioned graph. Forward runs each
segment on its backend; gradients flow through backends that are differentiable and, for the rest,
by re-running the segment on the reference (the documented backward fallback)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import torch

from ..backends.base import BackendError, Executable
from ..ir import Graph, IRError
from ..ir.meanings import TORCH_DTYPES, run_graph
from . import torch_op
from .partition import Segment
from .select import Selection
from .validate import Validator


class ReferenceGrad(torch.autograd.Function):
    """Forward on any backend; backward by autograd through the reference on the same inputs."""

    @staticmethod
    def forward(ctx, exe: Executable, names: tuple, n_inputs: int, *tensors):
        ctx.exe, ctx.names, ctx.n_inputs = exe, names, n_inputs
        ctx.save_for_backward(*tensors)
        outs = exe.run(dict(zip(names[:n_inputs], tensors[:n_inputs])), dict(zip(names[n_inputs:], tensors[n_inputs:])))
        ctx.mark_non_differentiable(*[o for o in outs if not o.is_floating_point()])
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        tensors = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in tensors]
            env = dict(zip(ctx.names, leaves))
            outs = run_graph(ctx.exe.graph, {}, env)
            it = iter(torch_op.vjp(outs, grads, leaves))
        return (None, None, None, *[next(it) if t.requires_grad else None for t in leaves])


def check_outputs(segment: Segment, outs):
    """A backend must return what the graph declares: count, rank, dtype."""
    values = segment.graph.values()
    if len(outs) != len(segment.graph.outputs):
        raise BackendError(f"{segment.backend} returned {len(outs)} outputs for {len(segment.graph.outputs)}")
    for name, t in zip(segment.graph.outputs, outs):
        want = values[name].type
        if t.dim() != want.rank or t.dtype != TORCH_DTYPES[want.dtype.value]:
            raise BackendError(f"{segment.backend} returned {str(t.dtype)[6:]}{list(t.shape)} for '{name}', "
                               f"declared {want}")


def safe_name(name: str) -> str:
    return name.replace(".", "__")


class CompiledModel(torch.nn.Module):
    def __init__(self, graph: Graph, params: Mapping[str, torch.Tensor], selection: Selection,
                 segments: list[tuple[Segment, Executable]], validator: Validator | None = None):
        super().__init__()
        self.graph, self.selection, self.segments, self.validator = graph, selection, segments, validator
        self.param_names = graph.param_names()
        for name in self.param_names:
            t = params[name]
            self.register_parameter(safe_name(name), torch.nn.Parameter(t, requires_grad=t.is_floating_point()))
        self.op_handle = torch_op.register(self)

    @property
    def device(self):
        return self.selection.device

    def named_graph_params(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, safe_name(n)) for n in self.param_names}

    def bind_inputs(self, args, kwargs) -> dict[str, torch.Tensor]:
        names = [v.name for v in self.graph.inputs]
        if len(args) > len(names):
            raise IRError(f"graph '{self.graph.name}' takes {len(names)} inputs ({', '.join(names)}), got {len(args)}")
        bound = dict(zip(names, args)) | kwargs
        missing, extra = set(names) - bound.keys(), bound.keys() - set(names)
        if missing or extra:
            raise IRError(f"graph '{self.graph.name}' inputs are {names}; missing {sorted(missing)}, "
                          f"unexpected {sorted(extra)}")
        for v in self.graph.inputs:
            t = bound[v.name]
            want = TORCH_DTYPES[v.type.dtype.value]
            if t.dtype != want or t.dim() != v.type.rank or any(
                    isinstance(d, int) and d != s for d, s in zip(v.type.shape, t.shape)):
                raise IRError(f"input '{v.name}' must be {v.type}, got {str(t.dtype)[6:]}{list(t.shape)}")
            bound[v.name] = t.to(self.device.torch_device)
        return bound

    def forward(self, *args, **kwargs):
        """Under torch.compile/export: one custom op, `torch.ops.portable_moe.run` (torch_op.py); in eager
        mode the segments run directly, so training differentiates them without re-running the forward."""
        env = self.bind_inputs(args, kwargs)
        inputs, params = [env[v.name] for v in self.graph.inputs], list(self.named_graph_params().values())
        if torch.compiler.is_compiling():
            results = torch.ops.portable_moe.run(self.op_handle, inputs, params)
        else:
            results = self.run_segments(inputs, params)
        return results[0] if len(results) == 1 else tuple(results)

    def run_segments(self, inputs: list[torch.Tensor], params: list[torch.Tensor],
                     validate: bool = True) -> list[torch.Tensor]:
        """Each segment on its backend; differentiable when grad is on (the op's backward uses that)."""
        env = dict(zip((v.name for v in self.graph.inputs), inputs))
        params = dict(zip(self.param_names, params))
        for segment, exe in self.segments:
            g = segment.graph
            ins = {v.name: env[v.name] for v in g.inputs}
            ps = {v.name: params[v.name] for v in g.params}
            if exe.differentiable or not torch.is_grad_enabled():
                outs = exe.run(ins, ps)
            else:
                outs = ReferenceGrad.apply(exe, (*ins, *ps), len(ins), *ins.values(), *ps.values())
            check_outputs(segment, outs)
            env.update(zip(g.outputs, outs))
        if validate and self.validator is not None:
            self.validator.maybe_check(self, env, params)
        return [env[o] for o in self.graph.outputs]

    def placement(self) -> dict[str, str]:
        """node name -> backend that runs it."""
        return {n.name: seg.backend for seg, _ in self.segments for n in seg.graph.nodes}

    def report(self) -> dict:
        return {"device": self.device.to_dict(), "dtype": self.selection.dtype.value,
                "selected": self.selection.winner, "source": self.selection.source,
                "candidates": [vars(c) for c in self.selection.candidates],
                "segments": [{"backend": s.backend, "nodes": [n.name for n in s.graph.nodes],
                              "fallback_reasons": s.reasons, "notes": list(getattr(e, "notes", []))}
                             for s, e in self.segments]}

    def why(self) -> str:
        lines = [self.selection.explain(), f"{len(self.segments)} segment(s), "
                 f"{len(self.segments) - 1} cross-backend boundary(ies):"]
        for seg, exe in self.segments:
            ops = Counter(n.op for n in seg.graph.nodes)
            lines.append(f"  {seg.backend:12} {len(seg.graph.nodes):3} nodes: "
                         + ", ".join(f"{op} x{c}" if c > 1 else op for op, c in ops.items()))
            for node, reason in list(seg.reasons.items())[:3]:
                lines.append(f"    {node}: {reason}")
            lines += [f"    note: {n}" for n in getattr(exe, "notes", [])]
        return "\n".join(lines)
