"""The TVM backend (apache-tvm 0.27): every op of the IR lowered to TVMScript/TE kernels with symbolic
token counts. It runs them on the CPU (llvm for the host's -mcpu) and on OpenCL (PoCL included, through
pyopencl), and lowers them ahead of time for CUDA, ROCm, OpenCL, Metal and the CPU. Torch only allocates,
reshapes, packs expert weights and checks inputs; gradients come from the reference (not differentiable).

Rooms: this file (the plug-in, its options and support table); plan.py (run-time planning: a step per
node); lower.py (targets, this CPU as LLVM sees it, ahead-of-time lowering, also used for the device run
on); executable.py; kernels/; tuning.py (GEMM tiles: tables, first-use tuning). Imports flow one way:
kernels <- plan <- lower <- executable <- tuning <- this file. TVM is imported on first use (~2 s)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...ir import DType, Graph
from ..base import Backend, BackendError, BackendOptions, Executable, Support, import_failure
from ..devices import Device

OPS = ("router", "dispatch", "grouped_matmul", "swiglu", "combine", "linear", "attention", "cross_entropy", "add",
       "mul", "silu", "sigmoid", "gelu", "rms_norm", "softmax", "embedding")
DECLINED = {
    "float16": "the kernels are written for float32 (fp16 has no fast CPU path here: ~0.3 GFLOP/s)",
    "bfloat16": "the kernels are written for float32; bf16 is not lowered yet",
    "float64": "float64 is the oracle's dtype; the reference runs it",
    **dict.fromkeys(("float8_e4m3fn", "float8_e4m3fnuz"), "fp8 compute is not defined yet"),
}


@dataclass(frozen=True)
class TVMOptions(BackendOptions):
    """Plain defaults; portable_moe.runtime.options_for fills tune_seconds, threads and rocm_path from knobs."""

    use_tuned: bool = True          # tiles from the shipped table or this machine's tuning (else the model's)
    tune_seconds: float = 30.0      # first-use tuning budget per large GEMM (0: skip)
    threads: int = 0                # CPU threads (0: every core this process may use)
    rocm_path: str | None = None    # folder holding amdgcn/bitcode (None: look in system folders)


class TVMBackend(Backend):
    name = "tvm"
    Options = TVMOptions
    # no webgpu: WGSL has no 64-bit integers, and offsets/order are int64 in the IR
    targets = ("cpu", "cuda:sm_80", "cuda:sm_90", "rocm:gfx90a", "rocm:gfx942", "rocm:gfx1100", "opencl", "metal")

    def devices(self) -> list[Device]:
        from ..opencl import devices

        return devices()

    def availability(self, device: Device) -> str | None:
        failure = import_failure("tvm")
        if failure or device.kind == "cpu":
            return failure
        if device.kind == "opencl":
            return None if self.devices() else "tvm: no OpenCL platform found by pyopencl"
        return (f"tvm: this apache-tvm build has no {device.kind} runtime; use `portable-moe compile --backend "
                f"tvm` for {device.kind} artifacts")

    def support(self, device: Device) -> Support:
        return Support({op: frozenset({DType.float32}) for op in OPS}, DECLINED)

    def compile(self, graph: Graph, device: Device, options: BackendOptions) -> Executable:
        reason = self.availability(device)
        if reason:
            raise BackendError(reason)
        self.require_supported(graph, device)
        from .executable import TVMExecutable, use_threads
        from .plan import plan
        from .tuning import tile_for

        opts = TVMOptions.of(options)
        if device.kind == "cpu":
            use_threads(opts.threads)       # first-use tuning times the kernels as they will run
        steps = plan(graph, lambda *a: tile_for(*a, opts, device.kind))
        return TVMExecutable(graph, device, steps, opts.cache_root(self.name), opts.threads)

    def schedule(self, device: Device, options: BackendOptions) -> str | None:
        if device.kind not in ("cpu", "opencl"):
            return None
        from .tuning import describe

        return describe(device.kind, TVMOptions.of(options))

    def lower(self, graph: Graph, target: str, out_dir: Path, options: BackendOptions) -> dict:
        self.check_target(target)
        if import_failure("tvm"):
            raise BackendError(import_failure("tvm"))
        from .kernels.gemm import GpuTile
        from .lower import lower_graph
        from .tuning import tile_for

        opts = TVMOptions.of(options)
        tiles = (lambda *a: tile_for(*a, opts)) if target == "cpu" else (lambda *a: (GpuTile(), "n/a"))
        return lower_graph(self, graph, target, Path(out_dir), opts, tiles)

