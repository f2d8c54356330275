"""The demo's sections after the main run: one function per capability, each a few lines of output."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .. import compile as compile_model
from .. import registry
from ..backends.base import BackendError
from ..ir.meanings import run_graph
from ..runtime.tolerance import global_error


@dataclass(frozen=True)
class Section:
    title: str
    run: Callable


def executing_backends(device) -> list[str]:
    return [name for name, b in registry.loaded().items() if b.executes and b.availability(device) is None]


def conformance(graph, params, device, out):
    """The quick conformance tier in float32 for every backend here; verdicts feed run-time selection."""
    from ..conformance.report import write_html
    from ..conformance.runner import run_quick
    from ..ir import DType
    from ..runtime import select

    t0 = time.perf_counter()
    report = run_quick("all", device.id, ["float32"], progress=True)
    for line in report.summary_lines():
        print(line)
    out.mkdir(parents=True, exist_ok=True)
    write_html(report, out / "conformance.html")
    print(f"{time.perf_counter() - t0:.0f} s; matrix: {out / 'conformance.html'}")
    print("selection now: " + select(device, DType.float32).explain().splitlines()[0])


def backends_table(graph, params, device, out):
    """Every backend that executes here runs the same model; what ran where and how close it is."""
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(3))
    want, = run_graph(graph, {"ids": ids}, {k: v.double() for k, v in params.items()})
    print(f"{'backend':12} {'nodes on it':>11} {'fallback':>9} {'compile':>8} {'run':>9} {'global err':>10}")
    for name in executing_backends(device):
        t0 = time.perf_counter()
        model = compile_model(graph, params, device=device, backend=name)
        t1 = time.perf_counter()
        with torch.no_grad():
            got = model(ids)
        t2 = time.perf_counter()
        placed = model.placement()
        mine = sum(1 for b in placed.values() if b == name)
        print(f"{name:12} {mine:>5}/{len(placed):<5} {len(placed) - mine:>9} {t1 - t0:>7.1f}s "
              f"{(t2 - t1) * 1e3:>7.0f}ms {global_error(got.cpu(), want):>10.1e}")


def balance(graph, params, device, out):
    """A DeepSeek-like skewed load on a mixed NVIDIA/AMD cluster: our plan against EPLB at the same memory
    (all layers together), compute and communication, then a re-plan under a move budget."""
    from ..balance import Cluster, ClusterDevice, eplb_placement, plan
    from ..balance.plot import plot_device_times, step_ratio

    rng = np.random.default_rng(0)
    layers, experts, expert_bytes = 4, 64, 2**20
    loads = rng.zipf(1.6, size=(layers, experts)).clip(max=500).astype(float) * 100
    cluster = Cluster(tuple(  # throughput: token copies / s; memory: 18 or 30 expert copies per layer
        [ClusterDevice(f"h100-{i}", "nvidia", "H100", 0, 11.2e6, 18 * layers * expert_bytes) for i in range(4)]
        + [ClusterDevice(f"mi300x-{i}", "amd", "MI300X", 1, 14.8e6, 30 * layers * expert_bytes) for i in range(4)]))
    eplb = eplb_placement(loads, cluster, expert_bytes).predicted
    t0 = time.perf_counter()
    ours = plan(loads, cluster, expert_bytes)
    took = time.perf_counter() - t0
    mine, used = ours.predicted, ours.predicted["memory"]
    print(f"cluster 4 x H100 + 4 x MI300X, {layers} layers x {experts} experts, skewed load, the same memory budget "
          f"for both: {sum(used['budget_bytes']) / 2**20:.0f} MiB (ours places {sum(used['used_bytes']) / 2**20:.0f} "
          f"MiB of copies; EPLB's equal slots per GPU fit {sum(eplb['memory']['used_bytes']) / 2**20:.0f} MiB)")
    print(f"compute step / fluid bound: ours {step_ratio(mine):.3f}, EPLB {step_ratio(eplb):.3f}; with "
          f"communication: ours {mine['summary']['step_s'] * 1e3:.3f} ms, EPLB {eplb['summary']['step_s'] * 1e3:.3f} "
          f"ms per step (flow bound {mine['summary']['bound_step_s'] * 1e3:.3f} ms); across the vendor bridge: "
          f"ours {mine['summary']['bytes_per_class']['other_vendor'] / 2**20:.1f} MiB, EPLB "
          f"{eplb['summary']['bytes_per_class']['other_vendor'] / 2**20:.1f} MiB (planned in {took * 1e3:.0f} ms)")
    drifted = np.roll(loads, 3, axis=1) * rng.uniform(0.8, 1.25, size=loads.shape)
    again = plan(drifted, cluster, expert_bytes, previous=ours, max_move_bytes=8 * expert_bytes)
    total = sum(len(layer.expert) for layer in ours.layers) * expert_bytes
    print(f"re-plan after the hot experts changed moved {again.moved_bytes / 2**20:.0f} MiB of {total / 2**20:.0f} "
          f"MiB of replicas (budget 8 MiB); compute step / fluid bound {step_ratio(again.predicted):.3f}")
    out.mkdir(parents=True, exist_ok=True)
    plot_device_times(mine, eplb, cluster, out / "placement.png", other_label="EPLB")
    print(f"plot: {out / 'placement.png'}")


AOT_TARGETS = (("triton", "cuda:sm_80"), ("triton", "cuda:sm_90"), ("triton", "rocm:gfx90a"), ("triton", "rocm:gfx942"),
               ("tvm", "cuda:sm_90"), ("tvm", "rocm:gfx942"), ("tvm", "opencl"), ("tvm", "metal"))


def manifest_line(manifest: dict, seconds: float) -> str:
    kernels = manifest["kernels"]
    kinds = sorted({stage for k in kernels for stage in k.get("artifacts", {})})
    matrix: dict[str, int] = {}
    for k in kernels:
        for name, count in (k.get("matrix_instructions") or {}).items():
            matrix[name] = matrix.get(name, 0) + count
    found = ", ".join(f"{n} x{c}" for n, c in matrix.items() if c) or "-"
    hits = sum(1 for k in kernels if k.get("cache_hit"))
    return (f"{manifest['backend']:7} {manifest['target']:12} {len(kernels):2} kernels  {'/'.join(kinds):24} "
            f"matrix instructions: {found:18} cache hits {hits}/{len(kernels)}  {seconds:4.1f}s")


def ahead_of_time(graph, params, device, out):
    """The same model lowered for GPUs this machine does not have."""
    from ..runtime.compile import options_for

    for name, target in AOT_TARGETS:
        try:
            backend = registry.load(name)
        except registry.BackendUnavailable as e:
            print(f"{name:7} {target:12} unavailable: {e.reason}")
            continue
        t0 = time.perf_counter()
        try:
            manifest = backend.lower(graph, target, out / f"{name}-{target.replace(':', '_')}",
                                     options_for(backend, None))
        except BackendError as e:       # a toolchain this machine lacks (nvcc, ROCm device libraries)
            print(f"{name:7} {target:12} not here: {e}")
            continue
        print(manifest_line(manifest, time.perf_counter() - t0))
    print(f"artifacts and manifest.json per target under {out}")


def onnx_export(graph, params, device, out):
    """The model in standard ONNX operators, checked by onnx.checker, runnable by any ONNX runtime."""
    from .export import demo_summary

    print(demo_summary())


def training(graph, params, device, out):
    """Expert-parallel training: two gloo ranks on different backends, the balancer re-planning mid-run;
    then two emulated vendor islands behind a slowed bridge, tokens kept in their island."""
    from ..train.demo import demo, island_demo

    for line in demo() + island_demo():
        print(line)


def hugging_face(graph, params, device, out):
    """A tiny random transformers Mixtral, imported into the IR, run here, checked against transformers."""
    from ..hf.demo import demo_summary
    from ..ir import DType
    from ..runtime import select

    print(demo_summary(backend=select(device, DType.float32).winner, family="mixtral", device=device.id))


SECTIONS: dict[str, Section] = {
    "conformance": Section("conformance: every backend's numerics against the float64 reference", conformance),
    "backends": Section("every backend that executes here, on the same model", backends_table),
    "compile": Section("ahead-of-time compilation for NVIDIA and AMD GPUs (no GPU needed)", ahead_of_time),
    "onnx": Section("ONNX interchange (standard operators, no custom MoE op)", onnx_export),
    "balance": Section("expert placement on a mixed-vendor cluster (balancer vs EPLB)", balance),
    "train": Section("expert-parallel training: 2 ranks on different backends, then 2 vendor islands", training),
    "hf": Section("a Hugging Face model imported (transformers Mixtral, tiny, random weights)", hugging_face),
}
NAMES = tuple(SECTIONS)
