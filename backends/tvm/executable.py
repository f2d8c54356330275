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

import torch

from ...ir import Graph
from ..base import Executable
from ..cache import Store, make_key
from ..devices import Device
from . import opencl_runtime
from .env import TVM_VERSION, host_cpu, tvm, use_threads
from .plan import Step


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


def module_of(step: Step, gpu: bool, target) -> tvm.IRModule:
    funcs = step.kernels(gpu, target)
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

    def __init__(self, module, weight: PackedWeights):
        self.module, self.weight = module, weight

    def __call__(self, name: str, *tensors):
        self.module[name](*[tvm.runtime.from_dlpack(aligned(t.detach())) for t in tensors])


PARAM = re.compile(r"(\w+): T\.Buffer\(\(([^)]*)\)")


def base_name(var: str) -> str:
    """A shape variable without the _<n> suffix TVMScript adds when it prints a renamed one."""
    return re.sub(r"_\d+$", "", var)


def buffers(func) -> list[tuple[str, list[str]]]:
    """(buffer name, dims as text) per parameter of a PrimFunc, read from its TVMScript signature."""
    header = func.script().split("def ", 1)[1].split("):\n", 1)[0]
    return [(base_name(name), [base_name(d.strip()) for d in dims.split(",") if d.strip()])
            for name, dims in PARAM.findall(header)]


class OpenCLCall:
    """Runs a step's TVM-generated OpenCL kernels through pyopencl, arguments matched by buffer name."""

    def __init__(self, step: Step, kernels: dict, funcs: dict):
        self.step, self.kernels = step, kernels
        self.buffers = {name: buffers(f) for name, f in funcs.items()}

    def __call__(self, name: str, *tensors):
        tensors = [t.detach().contiguous() for t in tensors]
        named, sizes = {}, {}
        for (buf, shape), t in zip(self.buffers[name], tensors):
            named[buf] = t
            sizes.update((d, t.shape[i]) for i, d in enumerate(shape) if d.isidentifier())
        grid, block = self.step.launch[name](sizes)
        outputs = tuple(buf for buf, _ in self.buffers[name][-self.n_outputs(name):])
        # outputs are fresh contiguous tensors, so the copies back land in the caller's tensors
        self.kernels[f"{name}_kernel"](grid, block, named, sizes, outputs)

    def n_outputs(self, name: str) -> int:
        return {"select": 4, "sort": 2}.get(name, 1)

    def weight(self, w: torch.Tensor, E: int, nb: int) -> torch.Tensor:
        return w.detach().float().reshape(E, *w.shape[-2:]).contiguous()


def opencl_call_of(step: Step, target, cached=None) -> OpenCLCall:
    """The step's kernels as OpenCL C, built for the device; cached(source) -> text goes through the
    compile cache (source() compiles), without it they are compiled now."""
    mod = module_of(step, True, target)

    def source() -> str:
        return tvm.compile(mod, target=target).mod.imports[0].inspect_source()

    text = cached(source) if cached else source()
    return OpenCLCall(step, opencl_runtime.build(text), {g.name_hint: mod[g] for g in mod.get_global_vars()})


def tile_text(tile: dict) -> str:
    return f"{tile['edge']}x{tile['edge']}" if "edge" in tile else f"{tile['MT']}x{tile['NB']}x{tile['NC']}"


class TVMExecutable(Executable):
    differentiable = False

    def __init__(self, graph: Graph, device: Device, steps: list[Step], cache_dir: Path, threads: int = 0):
        super().__init__(graph, device)
        self.steps, self.calls, self.packed, self.threads = steps, [], PackedWeights(), threads
        if device.kind == "opencl":
            self.target = tvm.target.Target({"kind": "opencl"}, host={"kind": "llvm"})
            self.calls = [self.opencl_call(s, cache_dir) for s in steps]
        else:
            from .env import cpu_target

            use_threads(threads)
            self.target = cpu_target()
            self.calls = [self.cpu_call(s, cache_dir) for s in steps]

    def cpu_call(self, step: Step, cache_dir: Path) -> CpuCall:
        def build(folder: Path) -> dict:
            tvm.compile(module_of(step, False, self.target), target=self.target).export_library(str(folder / "lib.so"))
            return {}

        entry = store(cache_dir).fetch(entry_key(step.spec, str(self.target)), build)
        return CpuCall(tvm.runtime.load_module(str(entry.path / "lib.so")), self.packed)

    def opencl_call(self, step: Step, cache_dir: Path) -> OpenCLCall:
        def cached(source) -> str:
            def build(folder: Path) -> dict:
                (folder / "kernels.cl").write_text(source())
                return {}
            return store(cache_dir).fetch(entry_key(step.spec, str(self.target)), build).read("kernels.cl").decode()

        return opencl_call_of(step, self.target, cached)

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
        return [f"{s.nodes[0].name}: tile {tile_text(s.spec['tile'])} ({s.tuning}, {where})"
                for s in self.steps if s.tuning != "n/a"]

    def run(self, inputs: Mapping, params: Mapping) -> list:
        if self.device.kind == "cpu":
            use_threads(self.threads)
        env = {**inputs, **params}
        with torch.no_grad():
            for step, call in zip(self.steps, self.calls):
                head = step.nodes[0]
                args = [None if i is None else env[i] for i in head.inputs]
                results = step.run(call, *args)
                last = step.nodes[-1]
                env.update((v.name, r) for v, r in zip(last.outputs, results))
        return [env[o] for o in self.graph.outputs]
