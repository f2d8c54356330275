"""Under torch.compile a CompiledModel runs as one torch custom op, `torch.ops.portable_moe.run`, so
torch.compile, torch.export and CUDA graphs see a single opaque node (with a fake implementation that gives output
shapes from the graph's types) instead of tracing into Triton, TVM or ONNX Runtime.

The executable itself cannot travel through the dispatcher, so a model registers under an integer
handle; the op takes the handle, the graph inputs and the parameters. Backward is a second op that
re-runs the model's forward with autograd on and differentiates it: the backends' own backward where
they have one, the float64-capable reference meanings where they do not."""

from __future__ import annotations

import itertools
import weakref

import torch

from ..ir import Graph, IRError
from ..ir.meanings import TORCH_DTYPES

_MODELS: weakref.WeakValueDictionary[int, torch.nn.Module] = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)


def register(model: torch.nn.Module) -> int:
    handle = next(_HANDLES)
    _MODELS[handle] = model
    return handle


def model_of(handle: int):
    model = _MODELS.get(handle)
    if model is None:
        raise IRError(f"portable_moe executable {handle} no longer exists (it was garbage-collected)")
    return model


def bind_sizes(graph: Graph, inputs: list[torch.Tensor]) -> dict[str, int]:
    """Symbol -> size, from the inputs' actual shapes (SymInts under torch.compile)."""
    sizes = {}
    for v, t in zip(graph.inputs, inputs):
        for dim, size in zip(v.type.shape, t.shape):
            if isinstance(dim, str) and "*" not in dim:
                sizes[dim] = size
    return sizes


def evaluate(dim, sizes: dict, graph: Graph):
    if isinstance(dim, int):
        return dim
    size = 1
    for part in dim.split("*"):
        if part.isdigit():
            size = size * int(part)
        elif part in sizes:
            size = size * sizes[part]
        else:
            raise IRError(f"graph '{graph.name}': output size '{part}' is not given by any input's shape")
    return size


def output_like(graph: Graph, inputs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Empty tensors of the graph's output types, sized from the inputs (the op's fake implementation)."""
    sizes, values = bind_sizes(graph, inputs), graph.values()
    outs = []
    for name in graph.outputs:
        t = values[name].type
        outs.append(torch.empty([evaluate(d, sizes, graph) for d in t.shape], dtype=TORCH_DTYPES[t.dtype.value],
                                device=device))
    return outs


def unaliased(outs: list[torch.Tensor], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """A custom op's outputs may not alias its inputs or each other."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if t.numel()}
    fresh = []
    for o in outs:
        ptr = o.untyped_storage().data_ptr()
        fresh.append(o.clone() if o.numel() and ptr in seen else o)
        seen.add(ptr)
    return fresh


@torch.library.custom_op("portable_moe::run", mutates_args=())
def run(handle: int, inputs: list[torch.Tensor], params: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        outs = model_of(handle).run_segments(inputs, params)
    return unaliased(list(outs), [*inputs, *params])


@run.register_fake
def _run_fake(handle, inputs, params):
    model = model_of(handle)
    device = (inputs or params)[0].device
    return output_like(model.graph, inputs, device)


def autograd_on():
    """Inside a custom op the dispatcher excludes the autograd keys; backward needs them back."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in torch._C.DispatchKey.__members__.values():
        if key.name.startswith("Autograd") or key.name == "ADInplaceOrView":
            exclude = exclude.remove(key)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


@torch.library.custom_op("portable_moe::run_backward", mutates_args=())
def run_backward(handle: int, inputs: list[torch.Tensor], params: list[torch.Tensor],
                 grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """Gradients for the floating-point inputs and parameters, in that order (zeros where unused)."""
    model = model_of(handle)
    with autograd_on(), torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in (*inputs, *params)]
        outs = model.run_segments(leaves[:len(inputs)], leaves[len(inputs):], validate=False)
        got = vjp(outs, grads, leaves)
    return [torch.zeros_like(t) if g is None else g.detach() for t, g in zip(requiring_grad(leaves), got)]


def requiring_grad(leaves) -> list[torch.Tensor]:
    return [t for t in leaves if t.requires_grad]


def vjp(outs, grads, leaves) -> list:
    """The gradient of each leaf that requires grad (None where unused), given the outputs' incoming
    gradients (None: no gradient for that output)."""
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    wrt = requiring_grad(leaves)
    if not pairs:
        return [None] * len(wrt)
    return list(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True))


@run_backward.register_fake
def _run_backward_fake(handle, inputs, params, grads):
    return [torch.empty_like(t) for t in (*inputs, *params) if t.is_floating_point()]


def _setup(ctx, inputs, output):
    handle, ins, params = inputs
    ctx.handle, ctx.n_inputs = handle, len(ins)
    ctx.save_for_backward(*ins, *params)


def _backward(ctx, grads):
    saved = ctx.saved_tensors
    ins, params = list(saved[:ctx.n_inputs]), list(saved[ctx.n_inputs:])
    got = iter(torch.ops.portable_moe.run_backward(ctx.handle, ins, params, list(grads)))
    per_tensor = [next(got) if t.is_floating_point() else None for t in saved]
    return None, per_tensor[:ctx.n_inputs], per_tensor[ctx.n_inputs:]


run.register_autograd(_backward, setup_context=_setup)
