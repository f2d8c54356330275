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

from ...ir import Graph
from .. import opencl
from ..base import Executable
from ..devices import Device
from .lower import compiled, target
from .plan import Step
from .tuning import host

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


class CpuCall:
    def __init__(self, library: Path, weight: PackedWeights):
        self.module, self.weight = tvm.runtime.load_module(str(library)), weight

    def __call__(self, name: str, *tensors):
        # TVM takes only contiguous, 64-byte aligned data; other views (only inputs are) are copied
        tensors = [t.detach().contiguous() for t in tensors]
        self.module[name](*[tvm.runtime.from_dlpack(t if t.data_ptr() % 64 == 0 else t.clone()) for t in tensors])


class OpenCLCall:
    """The tensors, in the PrimFunc's parameter order, are matched to the kernel's parameters by buffer
    name; its scalars are shape variables read off the tensors; the last outputs[name] are copied back."""

    outputs = {"select": 4, "sort": 2}

    def __init__(self, step: Step, source: str):
        self.step, program = step, opencl.program(source)
        self.kernels = {name: (getattr(program, f"{name}_kernel"), [p.split()[-2:] for p in params.split(",")])
                        for name, params in dict(SIGNATURE.findall(source)).items()}
        self.params = {name: [(p.name, [getattr(d, "name", None) for d in p.shape]) for p in f.params]
                       for name, f in step.kernels(True, target("opencl")).items()}

    def __call__(self, name: str, *tensors):
        tensors = [t.detach().contiguous() for t in tensors]
        named, sizes = {}, {}
        for (buf, dims), t in zip(self.params[name], tensors):
            named[f"{buf}_ptr"] = t
            sizes.update((d, t.shape[i]) for i, d in enumerate(dims) if d)
        kernel, params = self.kernels[name]
        args = [named[p] if p in named else SCALARS[kind](sizes[re.sub(r"_\d+$", "", p)]) for kind, p in params]
        # outputs are fresh contiguous tensors, so the copies back land in the caller's tensors
        opencl.launch(kernel, *self.step.launch[name](sizes), args, tensors[-self.outputs.get(name, 1):])

    def weight(self, w: torch.Tensor, E: int, nb: int) -> torch.Tensor:
        return w.detach().float().reshape(E, *w.shape[-2:]).contiguous()


def load(step: Step, kind: str, cache_dir: Path, packed: PackedWeights | None = None) -> CpuCall | OpenCLCall:
    """The step's kernels for a 'cpu' or 'opencl' device, ready to call."""
    entry = compiled(step, kind, cache_dir)
    if kind == "opencl":
        return OpenCLCall(step, entry.read(entry.meta["artifacts"]["source"]).decode())
    return CpuCall(entry.path / entry.meta["artifacts"]["so"], packed or PackedWeights())


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
