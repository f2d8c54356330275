"""The Triton backend: the MoE ops as one kernel source for every device, compiled on CUDA and ROCm, interpreted
on the CPU (slow); dense ops run on other backends. Rooms: executable (run-time planning), launch and autograd
(launches, forward and backward), kernels, tuning, lower (ahead of time)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...ir import DType, Graph
from ..base import Backend, BackendError, BackendOptions, Executable, Support, import_failure
from ..devices import Device

OPS = ("router", "dispatch", "grouped_matmul", "swiglu", "combine")
TARGETS = ("cuda:sm_80", "cuda:sm_90", "cuda:sm_100", "rocm:gfx90a", "rocm:gfx942", "rocm:gfx1100")
STAGES = ("ttir", "ttgir", "llir")
BF16_CPU = "Triton 3.9's interpreter returns garbage for bfloat16 tl.dot; bfloat16 runs on CUDA/ROCm only"
MAX_EXPERTS = 1024
DECLINED = {"float64": "Triton has no float64 tensor-core dot; use the reference",
            **dict.fromkeys(("float8_e4m3fn", "float8_e4m3fnuz"), "fp8 compute is not defined yet")}


@dataclass(frozen=True)
class TritonOptions(BackendOptions):
    stages: tuple[str, ...] = ()          # extra intermediate stages to write when lowering
    tokens: int = 256                     # token count the lowered kernels' tile configs are chosen for
    backward: bool = False                # lower the training (backward) kernels too

    def __post_init__(self):
        super().__post_init__()
        if bad := [s for s in self.stages if s not in STAGES]:
            raise BackendError(f"unknown stage(s) {bad}; choose from {list(STAGES)}")
        object.__setattr__(self, "stages", tuple(self.stages))


def check_shapes(graph: Graph):
    """Refuses, before any launch, shapes the kernels do not handle."""
    types = graph.types()
    for node in graph.nodes:
        weight = types[node.inputs[1]].shape if node.op in ("router", "grouped_matmul") else ()
        if node.op == "grouped_matmul" and not all(isinstance(d, int) for d in weight):
            raise BackendError(f"triton: node '{node.name}' needs a static weight shape, got {weight}")
        if weight and weight[0] > MAX_EXPERTS:      # the router's expert count is static (ir.ops)
            raise BackendError(f"triton: node '{node.name}' has {weight[0]} experts > {MAX_EXPERTS}")
        if node.op == "combine" and not isinstance(types[node.inputs[2]].shape[-1], int):
            raise BackendError(f"triton: node '{node.name}' needs a static top_k")


class TritonBackend(Backend):
    name = "triton"
    Options = TritonOptions
    targets = TARGETS

    def availability(self, device: Device) -> str | None:
        if device.kind not in ("cpu", "cuda", "rocm"):
            return f"triton: runs on CUDA, ROCm and the CPU (interpreter), not on {device.kind}"
        return import_failure("triton") or (import_failure("triton.runtime.interpreter") if device.kind == "cpu"
                                            else None)

    def support(self, device: Device) -> Support:
        cpu = device.kind == "cpu"
        floats = {DType.float32, DType.float16} | (set() if cpu else {DType.bfloat16})
        return Support({op: frozenset(floats) for op in OPS}, {**DECLINED, **({"bfloat16": BF16_CPU} if cpu else {})})

    def compile(self, graph: Graph, device: Device, options: BackendOptions) -> Executable:
        from .executable import TritonExecutable

        self.require_supported(graph, device)
        check_shapes(graph)
        return TritonExecutable(graph, device, TritonOptions.of(options))

    def lower(self, graph: Graph, target: str, out_dir: Path, options: BackendOptions) -> dict:
        self.check_target(target)
        if import_failure("triton"):
            raise BackendError(import_failure("triton"))
        from .lower import lower_graph

        kind, arch = target.split(":")
        device, not_lowered = Device(kind, 0, "", "", arch, 0, ""), []
        for node, reason in self.unsupported(graph, device):
            if node.op in OPS:
                raise BackendError(f"triton cannot lower node '{node.name}' (op {node.op}) for {target}: {reason}")
            not_lowered.append({"node": node.name, "op": node.op, "reason": reason})
        check_shapes(graph)
        return lower_graph(graph, target, device, Path(out_dir), TritonOptions.of(options), not_lowered)
