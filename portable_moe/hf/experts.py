"""transformers' experts interface: `experts_implementation="portable_moe"` runs a model's experts
(dispatch, gate/up and down grouped GEMMs, SwiGLU, combine) on the backend selected for the model's
device; routing stays in transformers. Register once with `register()` (importing portable_moe does it
when transformers is already imported).

Legend: T tokens, K experts per token, E experts, H hidden, F expert FFN width."""

from __future__ import annotations

import torch

from ..ir import DType, Graph, GraphBuilder, TensorType, verify
from ..models.builder import routed_experts
from .errors import HFImportError

NAME = "portable_moe"


def experts_graph(E: int, H: int, F: int, K: int, dtype: DType) -> Graph:
    """x[T, H], indices[T, K], weights[T, K] -> y[T, H] = sum_k weights * down(swiglu(gate_up(x)))."""
    b = GraphBuilder(f"experts-E{E}-H{H}-F{F}-K{K}-{dtype.value}")
    x = b.input("x", TensorType(dtype, ("tokens", H)))
    indices = b.input("indices", TensorType(DType.int64, ("tokens", K)))
    weights = b.input("weights", TensorType(dtype, ("tokens", K)))
    gate_up = b.param("gate_up", TensorType(dtype, (E, 2 * F, H)))
    down = b.param("down", TensorType(dtype, (E, H, F)))
    return verify(b.finish(routed_experts(b, x, indices, weights, gate_up, down, E, mm="_mm")))


def check_layout(experts: torch.nn.Module):
    """Refuses what our ops do not express, naming the module and the option."""
    name = type(experts).__name__
    for flag, wrong, why in (("has_bias", True, "per-expert biases"), ("is_transposed", True, "transposed weights"),
                             ("is_concatenated", False, "interleaved gate/up columns"),
                             ("has_gate", False, "no gate projection"),
                             ("has_post_expert_norm", True, "a norm after each expert"),
                             ("_is_expert_parallel", True, "transformers' own expert parallelism")):
        if getattr(experts, flag, not wrong) == wrong:
            raise HFImportError(f"{name}: {why} ({flag}={wrong}) cannot run on experts_implementation='{NAME}'")
    act = getattr(getattr(experts, "config", None), "hidden_act", "silu")
    if act != "silu":
        raise HFImportError(f"{name}: hidden_act={act!r} cannot run on experts_implementation='{NAME}' "
                            f"(our swiglu is silu(gate) * up)")


def executable(experts: torch.nn.Module, x: torch.Tensor, top_k: int):
    """The compiled experts of this module for x's device, dtype and top-k (compiled on first use)."""
    from ..runtime import compile

    cache = experts.__dict__.setdefault("_portable_moe", {})
    key = (str(x.device), x.dtype, top_k)
    if key not in cache:
        check_layout(experts)
        gate_up, down = experts.gate_up_proj, experts.down_proj
        E, F2, H = gate_up.shape
        dtype = DType(str(gate_up.dtype).removeprefix("torch."))
        graph = experts_graph(E, H, F2 // 2, top_k, dtype)
        model = compile(graph, {"gate_up": gate_up.detach(), "down": down.detach()}, device=str(x.device))
        model.gate_up, model.down = gate_up, down          # share transformers' Parameters (training)
        cache[key] = model
    return cache[key]


def experts_forward(experts: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """The function transformers calls: (hidden [T, H], top_k_index [T, K], top_k_weights [T, K]) -> [T, H]."""
    model = executable(experts, hidden_states, top_k_index.shape[-1])
    return model(hidden_states, top_k_index.long(), top_k_weights.to(hidden_states.dtype))


def why(experts: torch.nn.Module) -> list[str]:
    """`why()` of each executable this experts module has compiled so far."""
    return [m.why() for m in experts.__dict__.get("_portable_moe", {}).values()]


def register() -> None:
    """Adds "portable_moe" to transformers' ExpertsInterface (idempotent)."""
    try:
        from transformers.integrations.moe import ExpertsInterface
    except ImportError as e:
        raise HFImportError(f"this transformers has no ExpertsInterface ({e}); transformers >= 5 is needed") from None
    ExpertsInterface.register(NAME, experts_forward)
