"""Ahead-of-time lowering: every step of a graph compiled for one named target, its code written out
(CUDA C + PTX/cubin by nvcc; AMDGPU assembly + code object; OpenCL C; Metal; a .so for the CPU)
with a manifest. TVM 0.27's nvptx target is broken with its LLVM, so CUDA goes through CUDA C + nvcc."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from ...ir import Graph
from ..base import BackendError, write_manifest
from ..cache import safe_name
from ..progress import Progress, native_stderr_filtered
from .env import TVM_VERSION, cpu_target, host_cpu, rocm_bitcode, tvm
from .executable import entry_key, module_of, store
from .kernels.gemm import GpuTile
from .plan import Step, plan
from .tuning import tile_for

SOURCE_SUFFIX = {"cuda": ".cu", "opencl": ".cl", "metal": ".metal", "rocm": ".s"}
CAPTURED: list[bytes] = []       # code objects handed to TVM's ROCm link callback


def target_of(name: str, options):
    kind, _, arch = name.partition(":")
    host = {"kind": "llvm"}
    if kind == "cpu":
        return cpu_target()
    if kind == "cuda":
        return tvm.target.Target({"kind": "cuda", "arch": arch}, host=host)
    if kind == "rocm":
        if rocm_bitcode(options.rocm_path) is None:
            raise BackendError("tvm: rocm target needs the ROCm device libraries (Debian: rocm-device-libs)")
        return tvm.target.Target({"kind": "rocm", "mcpu": arch}, host=host)
    return tvm.target.Target({"kind": kind}, host=host)


def capture_rocm_link():
    """Wraps TVM's ROCm link callback so the code object it returns is also kept for writing out."""
    from tvm.support import rocm

    def link(obj_bin):
        out = rocm.callback_rocm_link(obj_bin)
        CAPTURED.append(bytes(out))
        return out

    tvm.register_global_func("tvm_callback_rocm_link", link, override=True)


def kind_of(target_name: str) -> str:
    return target_name.partition(":")[0]


@functools.cache
def nvcc_version() -> str | None:
    """nvcc's version line (it compiles the CUDA target's PTX and cubin), None without nvcc."""
    exe = shutil.which("nvcc")
    if exe is None:
        return None
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True)
    return (proc.stdout.strip().splitlines() or ["unknown"])[-1]


def nvcc(source: Path, arch: str, kind: str) -> Path | None:
    exe = shutil.which("nvcc")
    if exe is None:
        return None
    out = source.with_suffix(f".{kind}")
    proc = subprocess.run([exe, f"-{kind}", f"-arch={arch}", "-O3", "-o", str(out), str(source)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise BackendError(f"tvm: nvcc failed on {source.name}: {proc.stderr.strip()[-400:]}")
    return out


def file_stem(step: Step) -> str:
    return safe_name("+".join(n.name for n in step.nodes), 100)


def lower_step(step: Step, target_name: str, target, folder: Path) -> dict:
    """Compiles one step into a cache entry folder: {stage: file name} under the generic stem `kernel`."""
    kind = target_name.partition(":")[0]
    gpu = kind != "cpu"
    CAPTURED.clear()
    built = tvm.compile(module_of(step.kernels(gpu, target)), target=target)
    if not gpu:
        built.export_library(str(folder / "kernel.so"))
        return {"so": "kernel.so"}
    source = folder / f"kernel{SOURCE_SUFFIX[kind]}"
    source.write_text(built.mod.imports[0].inspect_source("asm" if kind == "rocm" else ""))
    artifacts = {"amdgcn" if kind == "rocm" else "source": source.name}
    if kind == "cuda":
        arch = target_name.partition(":")[2]
        for stage in ("ptx", "cubin"):
            path = nvcc(source, arch, stage)
            if path is not None:
                artifacts[stage] = path.name
    if kind == "rocm" and CAPTURED:
        (folder / "kernel.hsaco").write_bytes(CAPTURED[-1])
        artifacts["hsaco"] = "kernel.hsaco"
    return artifacts


def cached_step(step: Step, target_name: str, target, out_dir: Path, cache_dir: Path, progress) -> tuple[dict, bool]:
    """The step's artifacts, from the cache or compiled into it, copied into out_dir under the step's stem."""
    cuda = kind_of(target_name) == "cuda"
    key = entry_key(step.spec, str(target), aot=target_name, nvcc=nvcc_version() if cuda else None)
    entry = store(cache_dir).fetch(key, lambda folder: progress() or {"artifacts": lower_step(step, target_name,
                                                                                            target, folder)})
    stem, artifacts = file_stem(step), {}
    for stage, name in entry.meta["artifacts"].items():
        artifacts[stage] = stem + Path(name).suffix
        (out_dir / artifacts[stage]).write_bytes(entry.read(name))
    return artifacts, entry.hit


# TVM's AMDGPU codegen asks the (absent) ROCm runtime for limits and logs a warning per kernel
NATIVE_NOISE = ("Cannot get maximum number of threads for AMD codegen", "Unable to detect ROCm version")


def lower_graph(backend, graph: Graph, target_name: str, out_dir: Path, options) -> dict:
    from ..devices import cpu_device

    # every target gets the CPU's op set in float32; other nodes are listed, not lowered
    skipped = [{"node": n.name, "op": n.op, "reason": why} for n, why in backend.unsupported(graph, cpu_device())]
    if len(skipped) == len(graph.nodes):
        raise BackendError(f"tvm can lower no node of '{graph.name}': {skipped[0]['reason'] if skipped else ''}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if target_name.startswith("rocm"):
        capture_rocm_link()
    kernels = []
    tiles = (lambda *a: tile_for(*a, options)) if target_name == "cpu" else (lambda *a: (GpuTile(), "n/a"))
    steps = plan(graph, tiles, skip={s["node"] for s in skipped})
    progress = Progress(f"tvm {target_name}", len(steps))
    try:
        with native_stderr_filtered(NATIVE_NOISE):
            target = target_of(target_name, options)
            for step in steps:
                artifacts, hit = cached_step(step, target_name, target, out_dir, options.cache_root("tvm"),
                                             progress)
                kernels.append({"kernel": file_stem(step), "op": step.op, "nodes": [n.name for n in step.nodes],
                                "target": target_name, "tvm_version": TVM_VERSION, "artifacts": artifacts,
                                "cache_hit": hit})
    finally:
        progress.close()
    extra = {"tvm_version": TVM_VERSION, "tvm_target": str(target), "not_lowered": skipped}
    if target_name == "cpu":
        extra["mcpu"] = host_cpu()
    return write_manifest(out_dir, backend.name, target_name, graph, kernels, **extra)

