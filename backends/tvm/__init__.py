"""The TVM backend (apache-tvm 0.27): every op of the IR (MoE, dense, attention, cross_entropy) lowered to
TVMScript/TE kernels with symbolic token counts. Executes on the CPU (llvm with the host's -mcpu,
parallel and vectorised) and on OpenCL devices (PoCL included) through pyopencl; lowers ahead of time
for CUDA (PTX/cubin via nvcc), ROCm (AMDGPU assembly + code object), OpenCL, Metal and the CPU (.so).

TVM itself is imported on first use (it takes ~2 s), not when the backend is discovered.

Every op's arithmetic and data movement runs in TVM kernels. What stays in torch: allocating outputs,
reshapes, packing expert weights into column panels once per weight tensor and version (CPU), and the
input checks that must fail cleanly before a kernel could index out of bounds (expert indices and
embedding ids in range, cross_entropy targets in range, offsets a non-decreasing split). Gradients:
not differentiable; the runtime recomputes them with the reference (the declared fallback)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ...ir import DType, Graph
from ..base import Backend, BackendError, BackendOptions, Executable, Support, import_failure
from ..devices import Device

CPU_OPS = ("router", "dispatch", "grouped_matmul", "swiglu", "combine", "linear", "add", "mul", "silu",
           "sigmoid", "gelu", "rms_norm", "softmax", "embedding", "attention", "cross_entropy")
OPENCL_OPS = ("router", "dispatch", "grouped_matmul", "swiglu", "combine", "linear", "attention", "cross_entropy")
DECLINED = {
    "float16": "the kernels are written for float32 (fp16 has no fast CPU path here: ~0.3 GFLOP/s)",
    "bfloat16": "the kernels are written for float32; bf16 is not lowered yet",
    "float64": "float64 is the oracle's dtype; the reference runs it",
    "float8_e4m3fn": "fp8 compute is not defined yet",
    "float8_e4m3fnuz": "fp8 compute is not defined yet",
}


@dataclass(frozen=True)
class TVMOptions(BackendOptions):
    """Plain defaults; the runtime fills tune_seconds, threads and rocm_path from knobs.py."""

    use_tuned: bool = True          # tiles from the shipped table or this machine's tuning (else the model's)
    tune_seconds: float = 30.0      # first-use tuning budget per large GEMM (0: skip)
    threads: int = 0                # CPU threads (0: every core this process may use)
    rocm_path: str | None = None    # folder holding amdgcn/bitcode (None: look in system folders)

    @classmethod
    def of(cls, options: BackendOptions) -> TVMOptions:
        """options as TVMOptions, every shared BackendOptions field kept."""
        if isinstance(options, cls):
            return options
        return cls(**{f.name: getattr(options, f.name) for f in fields(BackendOptions)})


class TVMBackend(Backend):
    name = "tvm"
    Options = TVMOptions
    # no webgpu: WGSL has no 64-bit integers, and offsets/order are int64 in the IR
    targets = ("cpu", "cuda:sm_80", "cuda:sm_90", "rocm:gfx90a", "rocm:gfx942", "rocm:gfx1100", "opencl", "metal")

    def devices(self) -> list[Device]:
        from ..opencl import platform_device

        found = platform_device()
        if found is None:
            return []
        platform, name, memory = found
        vendor = "pocl" if "Portable" in platform else platform.split()[0].lower()
        return [Device("opencl", 0, vendor, name, "pocl" if vendor == "pocl" else "opencl", int(memory), platform)]

    def availability(self, device: Device) -> str | None:
        if import_failure("tvm"):
            return import_failure("tvm")
        if device.kind == "cpu":
            return None
        if device.kind == "opencl":
            return None if self.devices() else "tvm: no OpenCL platform found by pyopencl"
        return (f"tvm: this apache-tvm build has no {device.kind} runtime; use `portable-moe compile --backend "
                f"tvm` for {device.kind} artifacts")

    def support(self, device: Device) -> Support:
        ops = OPENCL_OPS if device.kind == "opencl" else CPU_OPS
        declined = dict(DECLINED)
        if device.kind == "opencl":
            declined.update({op: "lowered for OpenCL ahead of time only (no launch shapes for its dlight schedule)"
                             for op in CPU_OPS if op not in OPENCL_OPS})
        return Support({op: frozenset({DType.float32}) for op in ops}, declined)

    def compile(self, graph: Graph, device: Device, options: BackendOptions) -> Executable:
        reason = self.availability(device)
        if reason:
            raise BackendError(reason)
        self.require_supported(graph, device)
        from .executable import TVMExecutable
        from .plan import plan
        from .tuning import tile_for

        opts = TVMOptions.of(options)
        steps = plan(graph, lambda *a: tile_for(*a, opts, device.kind))
        return TVMExecutable(graph, device, steps, opts.cache_root(self.name), opts.threads)

    def schedule(self, device: Device, options: BackendOptions) -> str | None:
        """Whether the GEMM tiles are tuned for this CPU or OpenCL device, and from where."""
        if device.kind not in ("cpu", "opencl"):
            return None
        from .env import TVM_VERSION
        from .tuning import SHIPPED, device_name, host, local_table, read_table

        def knows(path):
            return any(k.split("|")[:2] == [TVM_VERSION, device_name(device.kind)] for k in read_table(path, dict))

        fallback = "the register model" if device.kind == "cpu" else "16x16 tiles"
        how = "shipped table" if device.kind == "cpu" and knows(SHIPPED) else "tuned here (first use)" \
            if knows(local_table(options, device.kind)) else \
            f"not tuned for it yet: tuned on first use of a large GEMM (tune_seconds), else {fallback}"
        if device.kind == "cpu":
            return f"CPU tiles for {host().describe()}: {how}"
        return f"GPU-style tiles (work-groups, shared memory) for {device_name('opencl')}: {how}"

    def lower(self, graph: Graph, target: str, out_dir: Path, options: BackendOptions) -> dict:
        self.check_target(target)
        if import_failure("tvm"):
            raise BackendError(import_failure("tvm"))
        from .lower import lower_graph

        opts = TVMOptions.of(options)
        return lower_graph(self, graph, target, Path(out_dir), opts)

