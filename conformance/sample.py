"""One conformance sample: a small graph, its inputs and params as exact float64/int64 values, and
flags saying which checks apply. Values are rounded to the sample's dtype once, when the sample is
made, so the float64 reference and the backend under test see the same numbers.

Legend: T tokens, H hidden, E experts, K top-k, R = T*K dispatched rows, F output features,
V vocabulary, B batch, S sequence."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..ir import DType, Graph, GraphBuilder, TensorType, verify
from ..ir.meanings import TORCH_DTYPES


@dataclass(frozen=True)
class Scale:
    """How big the samples of one tier are; a backend or device kind that is slow gets a smaller one."""

    name: str
    tokens: tuple[int, ...]       # random token counts (3 and 4: kernels have been wrong only there)
    tiles: tuple[int, ...]        # counts just below / at / above tile sizes
    hidden: int
    ffn: int
    experts: int
    top_k: int
    seeds: int                    # random samples per token count
    # Whole-model samples: in bfloat16 a router fed by computed values is ambiguous for most tokens, and
    # causally every later position of its row goes with it, so many short rows keep some compared.
    batch: int = 2
    seq: int = 8
    layer_tokens: tuple[int, ...] | None = None   # MoE layer samples (default: tokens, the last tile, 0, 1)
    models: bool = True                           # whole-model samples at this scale


SCALES = {
    # tiny: Triton's CPU interpreter in the quick tier (~5 s per layer sample, ~25 s per model sample):
    # two layer samples per preset, whole models in the full tier only.
    "tiny": Scale("tiny", (5,), (15, 16, 17), hidden=16, ffn=16, experts=4, top_k=2, seeds=1, batch=8, seq=2,
                  layer_tokens=(17, 0), models=False),
    "quick": Scale("quick", (3, 4, 33), (15, 16, 17, 63, 64, 65, 127, 128, 129), hidden=32, ffn=32, experts=8,
                   top_k=2, seeds=1, batch=32, seq=2),
    # tiny-full: the same in the full tier, with every layer sample and the whole models
    "tiny-full": Scale("tiny-full", (5,), (15, 16, 17), hidden=16, ffn=16, experts=4, top_k=2, seeds=1, batch=8,
                       seq=2),
    "full": Scale("full", (2, 3, 4, 7, 100, 257), (15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129),
                  hidden=64, ffn=48, experts=8, top_k=2, seeds=3, batch=32, seq=4),
}


@dataclass
class Arg:
    """One graph input or param. dims overrides the static shape with symbols (e.g. 'tokens');
    dtype None means the sample's dtype for floats and int64 for ints."""

    name: str
    value: torch.Tensor
    dims: tuple | None = None
    param: bool = False
    dtype: DType | None = None


@dataclass
class Sample:
    op: str                       # the op, or "layer:<preset>" / "model:<preset>"
    name: str                     # what this sample exercises, e.g. "tokens=17" or "edge:ties"
    dtype: DType
    seed: int
    graph: Graph
    tensors: dict[str, torch.Tensor]    # exact values: floats as float64, ints as int64
    kind: str = "op"              # op | layer | model: how router ambiguity masks the outputs
    backward: bool = True
    noncontiguous: bool = False
    special: bool = False         # inputs hold NaN/Inf on purpose: they must propagate
    empty: bool = False           # zero tokens on purpose: shapes and dtypes are all there is to compare
    notes: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.op}/{self.name}"

    def input_names(self) -> list[str]:
        return [v.name for v in self.graph.inputs]

    def param_names(self) -> list[str]:
        return [v.name for v in self.graph.params]

    def for_backend(self, device: str = "cpu") -> tuple[dict, dict]:
        """Inputs and params cast to the graph's types, on the torch device (strided if noncontiguous)."""
        types = {v.name: v.type for v in self.graph.inputs + self.graph.params}
        cast = {}
        for name, t in self.tensors.items():
            t = t.to(device=device, dtype=TORCH_DTYPES[types[name].dtype.value])
            cast[name] = strided(t) if self.noncontiguous else t
        return ({n: cast[n] for n in self.input_names()}, {n: cast[n] for n in self.param_names()})


def strided(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout (transposed storage, or every other element)."""
    if t.dim() >= 2 and t.shape[-1] > 1 and t.shape[-2] > 1:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if t.dim() >= 1 and t.numel() > 1:
        return torch.stack([t, t], dim=-1)[..., 0]
    return t


def exact(value: torch.Tensor, dtype: DType) -> torch.Tensor:
    """The value rounded to dtype, held in float64 (ints stay int64)."""
    if not value.is_floating_point():
        return value.to(torch.int64)
    return value.to(TORCH_DTYPES[dtype.value]).double()


def single_op(op: str, name: str, dtype: DType, seed: int, args: list[Arg | None], **attrs) -> Sample:
    """A one-node graph over the args (None for an omitted optional input)."""
    b = GraphBuilder(f"conformance-{op}")
    names, tensors = [], {}
    for a in args:
        if a is None:
            names.append(None)
            continue
        vdtype = a.dtype or (dtype if a.value.is_floating_point() else DType.int64)
        ttype = TensorType(vdtype, tuple(a.dims) if a.dims is not None else tuple(a.value.shape))
        names.append(b.param(a.name, ttype) if a.param else b.input(a.name, ttype))
        tensors[a.name] = exact(a.value, vdtype)
    outs = b.op(op, *names, name=op, **attrs)
    return Sample(op, name, dtype, seed, verify(b.finish(*outs)), tensors)


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(gen: torch.Generator, *shape, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


@dataclass(frozen=True)
class OpCase:
    """One record per op or model preset: generate(dtype, scale, seed) -> the samples."""

    op: str
    generate: Callable[[DType, Scale, int], list[Sample]]


def case_seed(base: int, op: str, index: int) -> int:
    return (base * 1_000_003 + zlib.crc32(op.encode()) + index) % 2**31
