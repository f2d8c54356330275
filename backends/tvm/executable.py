"""The TVM executable: each step lowered for its device (lower.compiled, through the artifact store) and
run in order, on the CPU (a library called through DLPack, zero-copy) or on OpenCL (TVM's OpenCL C
launched through pyopencl)."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import tvm
from torch.utils.weak import WeakIdKeyDictionary
from tvm import tirx

from ...ir import Graph
from .. import opencl
from ..base import Executable
from ..devices import Device
from .lower import compiled, host
from .plan import Step

# TVM names an OpenCL kernel's buffer parameters `<buffer>_ptr`, its scalars after shape variables (+ `_<n>`)
SIGNATURE = re.compile(r"__kernel void (\w+)_kernel\(([^)]*)\)")
SCALARS = {"long": np.int64, "int": np.int32}
POOL = threading.local()


def use_threads(count: int):
    """Sizes the calling thread's TVM pool (0: every core this process may use); left alone, TVM takes
    half the logical cores for hyper-threads and often runs one thread."""
    cores = sorted(os.sched_getaffinity(0))
    count = min(count or len(cores), len(cores))
    if getattr(POOL, "count", None) != count:
        tvm.get_global_func("runtime.config_threadpool")(1, count, [str(c) for c in cores[:count]])
        POOL.count = count


class PackedWeights:
    """Expert weights packed [E, N, K] -> [E, N/nb, K, nb] for the CPU kernels. An entry serves only the
    tensor object it was made from (held weakly: a new tensor at a recycled address is never taken for
    it), at the same storage, in-place version and nb; writes torch cannot see (`.data`, numpy) go unnoticed."""

    def __init__(self):
        self.entries = WeakIdKeyDictionary()

    def __call__(self, w: torch.Tensor, E: int, nb: int) -> torch.Tensor:
        state, entry = (w._version, w.data_ptr(), nb), self.entries.get(w)
        if entry is None or entry[0] != state:
            N, K = w.shape[-2:]
            packed = w.detach().float().reshape(E, N // nb, nb, K).transpose(2, 3).contiguous()
            entry = self.entries[w] = (state, packed)
        return entry[1]


class Kernels:
    """A step's kernels, called as call(name, *inputs) -> outputs: the kernel's buffers after the inputs are
    allocated from its signature ([buffer, dtype, dims]; a symbolic dim takes its size from the inputs)."""

    def __init__(self, signatures: dict):
        self.signatures = signatures

    def __call__(self, name: str, *inputs) -> list[torch.Tensor]:
        params, sizes = self.signatures[name], {}
        inputs = [t.detach().contiguous() for t in inputs]
        for (_, _, dims), t in zip(params, inputs):
            sizes.update((d, n) for d, n in zip(dims, t.shape) if isinstance(d, str))
        outputs = [torch.empty([sizes[d] if isinstance(d, str) else d for d in dims], dtype=getattr(torch, dtype))
                   for _, dtype, dims in params[len(inputs):]]
        self.launch(name, inputs, outputs, sizes)
        return outputs


class CpuCall(Kernels):
    def __init__(self, signatures: dict, library: Path, weight: PackedWeights):
        super().__init__(signatures)
        self.module, self.weight = tvm.runtime.load_module(str(library)), weight

    def launch(self, name: str, inputs: list, outputs: list, sizes: dict):
        # TVM takes only 64-byte aligned data; other input views are copied (outputs are fresh, aligned)
        self.module[name](*[tvm.runtime.from_dlpack(t if t.data_ptr() % 64 == 0 else t.clone())
                            for t in inputs + outputs])


def thread_extents(stmt, found: dict) -> dict:
    """thread tag (blockIdx.x, threadIdx.y, ...) -> the extent of the first loop bound to it."""
    if isinstance(stmt, tirx.For) and stmt.thread_binding is not None:
        found.setdefault(stmt.thread_binding.thread_tag, stmt.extent)
    for field in ("body", "seq", "then_case", "else_case", "block"):
        child = getattr(stmt, field, None)
        for c in (child or []) if field == "seq" else [child]:
            if c is not None:
                thread_extents(c, found)
    return found


class OpenCLCall(Kernels):
    """Tensors are matched to the kernel's parameters by buffer name (`<buffer>_ptr`), its scalars are shape
    variables (`<dim>` or `<dim>_<n>`); the launch shape is the PrimFunc's thread extents at these sizes."""

    def __init__(self, signatures: dict, step: Step, source: str):
        super().__init__(signatures)
        program = opencl.program(source)
        self.kernels = {name: (getattr(program, f"{name}_kernel"), [p.split()[-2:] for p in params.split(",")])
                        for name, params in dict(SIGNATURE.findall(source)).items()}
        self.extents = {name: (thread_extents(f.body, {}), {d.name: d for p in f.params for d in p.shape
                                                            if isinstance(d, tirx.Var)})
                        for name, f in step.kernels(True).items()}

    def shape(self, name: str, sizes: dict) -> tuple[tuple, tuple]:
        extents, dims = self.extents[name]
        analyzer = tvm.sym.Analyzer()
        for d, var in dims.items():
            analyzer.bind(var, sizes[d])
        size = {tag: int(analyzer.simplify(e)) for tag, e in extents.items()}
        axes = "xyz"[:max("xyz".index(tag[-1]) for tag in size) + 1]
        return tuple(size.get(f"blockIdx.{a}", 1) for a in axes), tuple(size.get(f"threadIdx.{a}", 1) for a in axes)

    def launch(self, name: str, inputs: list, outputs: list, sizes: dict):
        kernel, params = self.kernels[name]
        named = {f"{buf}_ptr": t for (buf, _, _), t in zip(self.signatures[name], inputs + outputs)}
        args = [named[p] if p in named else SCALARS[kind](sizes[re.sub(r"_\d+$", "", p)]) for kind, p in params]
        opencl.launch(kernel, *self.shape(name, sizes), args, outputs)

    def weight(self, w: torch.Tensor, E: int, nb: int) -> torch.Tensor:
        return w.detach().float().reshape(E, *w.shape[-2:]).contiguous()


def load(step: Step, kind: str, cache_dir: Path, packed: PackedWeights | None = None) -> CpuCall | OpenCLCall:
    """The step's kernels for a 'cpu' or 'opencl' device, ready to call."""
    entry = compiled(step, kind, cache_dir)
    artifacts, signatures = entry.meta["artifacts"], entry.meta["signatures"]
    if kind == "opencl":
        return OpenCLCall(signatures, step, entry.read(artifacts["source"]).decode())
    return CpuCall(signatures, entry.path / artifacts["so"], packed or PackedWeights())


class TVMExecutable(Executable):
    differentiable = False

    def __init__(self, graph: Graph, device: Device, steps: list[Step], cache_dir: Path, threads: int = 0):
        super().__init__(graph, device)
        self.steps, self.threads, self.packed = steps, threads, PackedWeights()
        self.calls = [load(s, device.kind, cache_dir, self.packed) for s in steps]

    def placement(self) -> dict[str, str]:
        """node -> the step that ran it (fused ones name their partner), and where a GEMM's tile came from."""
        return {n.name: "tvm:" + "+".join(m.op for m in s.nodes) + (f" ({s.tuning} tile)" if s.tuning != "n/a" else "")
                for s in self.steps for n in s.nodes}

    @property
    def notes(self) -> list[str]:
        where = host().cpu if self.device.kind == "cpu" else self.device.name
        return [f"{s.nodes[0].name}: tile {s.tile} ({s.tuning}, {where})" for s in self.steps if s.tuning != "n/a"]

    def run(self, inputs: Mapping, params: Mapping) -> list:
        if self.device.kind == "cpu":
            use_threads(self.threads)
        env = {**inputs, **params}
        with torch.no_grad():
            for step, call in zip(self.steps, self.calls):
                args = [None if i is None else env[i] for i in step.nodes[0].inputs]
                env.update((v.name, r) for v, r in zip(step.nodes[-1].outputs, step.run(call, *args)))
        return [env[o] for o in self.graph.outputs]
