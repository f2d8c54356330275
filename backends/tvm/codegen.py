"""Ahead-of-time lowering: every step of a graph compiled for one named target, its code written out
(CUDA C + PTX/cubin by nvcc; AMDGPU assembly + code object; OpenCL C; Metal; a .so for the CPU)
with a manifest. TVM 0.27's nvptx target is broken with its LLVM, so CUDA goes through CUDA C + nvcc."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ...ir import Graph
from ..base import BackendError, write_manifest
from .env import TVM_VERSION, cpu_target, host_cpu, rocm_bitcode, tvm
from .executable import module_of
from .kernels.gemm import CpuTile
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
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "+".join(n.name for n in step.nodes))


def lower_step(step: Step, target_name: str, target, out_dir: Path) -> dict:
    kind = target_name.partition(":")[0]
    stem = file_stem(step)
    gpu = kind != "cpu"
    CAPTURED.clear()
    built = tvm.compile(module_of(step, gpu, target), target=target)
    artifacts = {}
    if not gpu:
        built.export_library(str(out_dir / f"{stem}.so"))
        return {"so": f"{stem}.so"}
    device_mod = built.mod.imports[0]
    source = out_dir / f"{stem}{SOURCE_SUFFIX[kind]}"
    source.write_text(device_mod.inspect_source("asm" if kind == "rocm" else ""))
    artifacts["amdgcn" if kind == "rocm" else "source"] = source.name
    if kind == "cuda":
        arch = target_name.partition(":")[2]
        for stage in ("ptx", "cubin"):
            path = nvcc(source, arch, stage)
            if path is not None:
                artifacts[stage] = path.name
    if kind == "rocm" and CAPTURED:
        (out_dir / f"{stem}.hsaco").write_bytes(CAPTURED[-1])
        artifacts["hsaco"] = f"{stem}.hsaco"
    return artifacts


# TVM's AMDGPU codegen asks the (absent) ROCm runtime for limits and logs a warning per kernel
NATIVE_NOISE = ("Cannot get maximum number of threads for AMD codegen", "Unable to detect ROCm version")


@contextlib.contextmanager
def native_stderr_filtered(noise: tuple[str, ...]):
    """Routes the C++ side's stderr through a file, then passes on every line that is not known noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if not any(n in line for n in noise):
                    print(line, file=sys.stderr)


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
    with native_stderr_filtered(NATIVE_NOISE):
        target = target_of(target_name, options)
        tiles = (lambda *a: tile_for(*a, options)) if target_name == "cpu" else (lambda *a: (CpuTile(), "n/a"))
        for step in plan(graph, tiles, skip={s["node"] for s in skipped}):
            kernels.append({"kernel": file_stem(step), "op": step.op, "nodes": [n.name for n in step.nodes],
                            "target": target_name, "tvm_version": TVM_VERSION,
                            "artifacts": lower_step(step, target_name, target, out_dir)})
    extra = {"tvm_version": TVM_VERSION, "tvm_target": str(target), "not_lowered": skipped}
    if target_name == "cpu":
        extra["mcpu"] = host_cpu()
    return write_manifest(out_dir, backend.name, target_name, graph, kernels, **extra)
