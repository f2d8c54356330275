"""The TVM executable: the graph's steps compiled (through the disk cache) for the CPU (llvm, called
through DLPack, zero-copy) or for OpenCL (TVM's generated OpenCL C, run through pyopencl), run in order.

Not differentiable: the runtime recomputes gradients with the reference (the declared fallback)."""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import numpy as np
import torch

from ...ir import Graph
from .. import opencl
from ..base import Executable
from ..cache import Store, make_key
from ..devices import Device
from .env import TVM_VERSION, host_cpu, target_for, tvm, use_threads
from .plan import Step

# TVM names an OpenCL kernel's buffer parameters `<buffer>_ptr`, its scalars after shape variables (+ `_<n>`)
SIGNATURE = re.compile(r"__kernel void (\w+)_kernel\(([^)]*)\)")
SCALARS = {"long": np.int64, "int": np.int32}


@cache
def code_hash() -> str:
    """Every source file of this backend: a change to any kernel or schedule keys new cache entries."""
    here = Path(__file__).parent
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.rglob("*.py")))).hexdigest()[:16]


def entry_key(spec: dict, target: str, **more) -> str:
    return make_key(spec=spec, target=target, tvm=TVM_VERSION, code=code_hash(), **more)


@cache
def store(cache_dir: Path) -> Store:
    return Store(cache_dir, "tvm")


def module_of(funcs: dict) -> tvm.IRModule:
    return tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})


def aligned(t: torch.Tensor) -> torch.Tensor:
    """TVM takes only contiguous, 64-byte aligned data; other views (only inputs are) are copied."""
    t = t.contiguous()
    return t if t.data_ptr() % 64 == 0 else t.clone()


class PackedWeights:
    """Expert weights packed [E, N, K] -> [E, N/nb, K, nb] for the CPU kernels, kept per tensor *object*.
    An entry serves only the very tensor it was made from (a weak reference, so a fresh tensor that
    lands at a recycled address, e.g. a new torch.stack each training step, is never mistaken for it),
    at the same storage and in-place version; it dies with its tensor. Writes torch cannot see (through
    `.data` or numpy) are not noticed."""

    def __init__(self):
        self.entries: dict[tuple[int, int], tuple] = {}

    def __call__(self, w: torch.Tensor, E: int, nb: int) -> torch.Tensor:
        key, state = (id(w), nb), (w._version, w.data_ptr())
        entry = self.entries.get(key)
        if entry is not None and entry[0]() is w and entry[1] == state:
            return entry[2]
        N, K = w.shape[-2:]
        packed = w.detach().float().reshape(E, N // nb, nb, K).transpose(2, 3).contiguous()
        self.entries[key] = (weakref.ref(w, lambda _: self.entries.pop(key, None)), state, packed)
        return packed


class CpuCall:
    """Runs a step's kernels from one loaded library; expert weights go through the shared PackedWeights."""

    def __init__(self, module, weight: PackedWeights | None = None):
        self.module, self.weight = module, weight or PackedWeights()

    def __call__(self, name: str, *tensors):
        self.module[name](*[tvm.runtime.from_dlpack(aligned(t.detach())) for t in tensors])


class OpenCLCall:
    """Runs a step's TVM-generated OpenCL kernels through pyopencl: the tensors, given in the PrimFunc's
    parameter order, are matched to the kernel's parameters by buffer name, the scalars are the shape
    variables' values read off the tensors, and the last (outputs[name]) tensors are copied back."""

    outputs = {"select": 4, "sort": 2}

    def __init__(self, step: Step, source: str, funcs: dict):
        self.step, program = step, opencl.program(source)
        self.kernels = {name: (getattr(program, f"{name}_kernel"), [p.split()[-2:] for p in params.split(",")])
                        for name, params in dict(SIGNATURE.findall(source)).items()}
        self.params = {name: [(p.name, [getattr(d, "name", None) for d in p.shape]) for p in f.params]
                       for name, f in funcs.items()}

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


def cached(step: Step, target, cache_dir: Path, name: str, write):
    """The store's entry for the step on the target; on a miss write(path) makes its one file `name`."""
    def build(folder: Path) -> dict:
        write(folder / name)
        return {}

    return store(cache_dir).fetch(entry_key(step.spec, str(target)), build)


def load(step: Step, kind: str, cache_dir: Path | None = None, packed: PackedWeights | None = None):
    """The step's kernels built for a 'cpu' or 'opencl' device, ready to call: a library, or OpenCL C built
    for the device, through the artifact store (without cache_dir: compiled now, kept in memory)."""
    target = target_for(kind)
    if kind == "opencl":
        funcs = step.kernels(True, target)

        def source() -> str:
            return tvm.compile(module_of(funcs), target=target).mod.imports[0].inspect_source()

        text = source() if cache_dir is None else \
            cached(step, target, cache_dir, "kernels.cl", lambda p: p.write_text(source())).read("kernels.cl").decode()
        return OpenCLCall(step, text, funcs)

    def compiled():
        return tvm.compile(module_of(step.kernels(False, target)), target=target)

    if cache_dir is None:
        return CpuCall(compiled(), packed)
    entry = cached(step, target, cache_dir, "lib.so", lambda p: compiled().export_library(str(p)))
    return CpuCall(tvm.runtime.load_module(str(entry.path / "lib.so")), packed)


class TVMExecutable(Executable):
    differentiable = False

    def __init__(self, graph: Graph, device: Device, steps: list[Step], cache_dir: Path, threads: int = 0):
        super().__init__(graph, device)
        self.steps, self.threads, self.packed = steps, threads, PackedWeights()
        if device.kind == "cpu":
            use_threads(threads)
        self.calls = [load(s, device.kind, cache_dir, self.packed) for s in steps]

    def placement(self) -> dict[str, str]:
        """node -> how it ran (fused steps name their partner; where the GEMM's tile came from)."""
        out = {}
        for s in self.steps:
            for n in s.nodes:
                out[n.name] = f"tvm:{s.op}" + (f"+{s.nodes[1].op}" if len(s.nodes) > 1 else "") + \
                    (f" ({s.tuning} tile)" if s.tuning != "n/a" else "")
        return out

    @property
    def notes(self) -> list[str]:
        """For why(): where each GEMM's tile came from."""
        where = host_cpu() if self.device.kind == "cpu" else self.device.name
        return [f"{s.nodes[0].name}: tile {s.tile} ({s.tuning}, {where})"
                for s in self.steps if s.tuning != "n/a"]

    def run(self, inputs: Mapping, params: Mapping) -> list:
        if self.device.kind == "cpu":
            use_threads(self.threads)
        env = {**inputs, **params}
        with torch.no_grad():
            for step, call in zip(self.steps, self.calls):
                args = [None if i is None else env[i] for i in step.nodes[0].inputs]
                env.update((v.name, r) for v, r in zip(step.nodes[-1].outputs, step.run(call, *args)))
        return [env[o] for o in self.graph.outputs]
