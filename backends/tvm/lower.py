"""Targets (this CPU as LLVM names and sees it) and ahead-of-time lowering, which the executable also runs
for its own device: each step compiled for one target into the artifact store (a .so for the CPU, OpenCL C,
Metal, AMDGPU assembly + code object, and CUDA C + PTX/cubin by nvcc, as TVM 0.27's nvptx target is broken
with its LLVM), then written out with a manifest."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import tvm
from tvm import tirx

from ...ir import Graph
from ..base import BackendError, write_manifest
from ..cache import Entry, Store, make_key, safe_name
from ..devices import cpu_device
from ..progress import Progress, native_stderr_filtered
from .plan import Step, plan

SOURCE_SUFFIX = {"cuda": ".cu", "opencl": ".cl", "metal": ".metal", "rocm": ".s"}
CAPTURED: list[bytes] = []       # code objects TVM's ROCm link callback returned
# TVM's AMDGPU codegen asks the (absent) ROCm runtime for limits and logs a warning per kernel
NATIVE_NOISE = ("Cannot get maximum number of threads for AMD codegen", "Unable to detect ROCm version")
ARCH_FIELD = {"cuda": "arch", "rocm": "mcpu"}
TVM_VERSION = tvm.__version__


@dataclass(frozen=True)
class Host:
    cpu: str
    lanes: int                  # float32 lanes of the vectors LLVM will use
    registers: int              # vector registers
    l2_bytes: int


@cache
def host() -> Host:
    """This CPU as LLVM names it (znver5, skylake-avx512, ...) and sees it."""
    cpu = str(tvm.target.codegen.llvm_get_system_cpu())
    features = set(tvm.target.codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": cpu})))
    wide = "avx512f" in features and "prefer-256-bit" not in features
    lanes = 16 if wide else 8 if "avx2" in features or "avx" in features else 4
    registers = 32 if "avx512f" in features or "neon" in features else 16
    return Host(cpu, lanes, registers, l2_bytes())


def l2_bytes() -> int:
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        with suppress(OSError, ValueError):
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                return int(size.rstrip("KM")) << (20 if size.endswith("M") else 10)
    return 1 << 20


def target(name: str) -> tvm.target.Target:
    """The TVM target for 'cpu' (llvm for this CPU: ~4.5x faster than without -mcpu), 'opencl', 'metal',
    'cuda:<arch>' or 'rocm:<arch>'."""
    kind, _, arch = name.partition(":")
    if kind == "cpu":
        return tvm.target.Target({"kind": "llvm", "mcpu": host().cpu, "num-cores": len(os.sched_getaffinity(0))})
    spec = {"kind": kind, ARCH_FIELD[kind]: arch} if arch else {"kind": kind}
    return tvm.target.Target(spec, host={"kind": "llvm"})


@cache
def code_hash() -> str:
    """Every source file of this backend: a change to any kernel or schedule keys new cache entries."""
    files = sorted(Path(__file__).parent.rglob("*.py"))
    return make_key(sources=[p.read_text() for p in files])


def entry_key(spec: dict, target_name: str) -> str:
    nvcc = nvcc_version() if target_name.startswith("cuda") else None
    return make_key(spec=spec, target=str(target(target_name)), tvm=TVM_VERSION, code=code_hash(), nvcc=nvcc)


@cache
def store(cache_dir: Path) -> Store:
    return Store(cache_dir, "tvm")


def rocm_root(given: str | None) -> str | None:
    """The ROCm folder holding amdgcn/bitcode: `given`, else Debian's rocm-device-libs or /opt/rocm*."""
    found = [given] if given else [os.path.dirname(os.path.dirname(b)) for b in
                                   glob.glob("/usr/lib/*/amdgcn/bitcode") + glob.glob("/opt/rocm*/amdgcn/bitcode")]
    return next((r for r in found if os.path.isdir(os.path.join(r, "amdgcn", "bitcode"))), None)


def use_rocm(given: str | None) -> str | None:
    """rocm_root(given), told to TVM's ROCm codegen, whose link step is wrapped to keep each code object."""
    from tvm.support import rocm

    root = rocm_root(given)
    if root is None:
        return None

    def link(obj_bin):
        CAPTURED.append(bytes(rocm.callback_rocm_link(obj_bin)))
        return CAPTURED[-1]

    bitcode = os.path.join(root, "amdgcn", "bitcode", "")
    tvm.register_global_func("tvm_callback_rocm_bitcode_path", lambda *_: rocm.callback_rocm_bitcode_path(bitcode),
                             override=True)
    tvm.register_global_func("tvm_callback_rocm_link", link, override=True)
    return root


@cache
def nvcc_version() -> str | None:
    exe = shutil.which("nvcc")
    if exe is None:
        return None
    return (subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
            or ["unknown"])[-1]


def nvcc(source: Path, arch: str, stage: str) -> Path:
    out = source.with_suffix(f".{stage}")
    proc = subprocess.run([shutil.which("nvcc"), f"-{stage}", f"-arch={arch}", "-O3", "-o", str(out), str(source)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise BackendError(f"tvm: nvcc failed on {source.name}: {proc.stderr.strip()[-400:]}")
    return out


def signature(name: str, func: tirx.PrimFunc) -> list:
    """[buffer, dtype, dims] per parameter, a dim a number or a shape variable's name: how to call the kernel."""
    def dim(d):
        if not isinstance(d, tirx.IntImm | tirx.Var):
            raise BackendError(f"tvm: kernel {name} has a buffer dim {d} that is neither a number nor a variable")
        return int(d) if isinstance(d, tirx.IntImm) else d.name

    return [[p.name, str(p.dtype), [dim(d) for d in p.shape]] for p in func.params]


def build(step: Step, target_name: str, folder: Path) -> dict:
    """Compiles one step into folder; returns {"artifacts": {stage: file name}, "signatures": {kernel: ...}}."""
    kind, _, arch = target_name.partition(":")
    gpu, built_for = kind != "cpu", target(target_name)
    funcs = step.kernels(gpu)
    signatures = {n: signature(n, f) for n, f in funcs.items()}
    CAPTURED.clear()
    # the OpenCL launcher passes scalars by shape-variable name; TIR's CSE would rename them (b*s -> cse_v1)
    with tvm.transform.PassContext(config={"tirx.disable_cse_tir": kind == "opencl"}):
        built = tvm.compile(tvm.IRModule({n: f.with_attr("global_symbol", n) for n, f in funcs.items()}), built_for)
    if not gpu:
        built.export_library(str(folder / "kernel.so"))
        return {"artifacts": {"so": "kernel.so"}, "signatures": signatures}
    source = folder / f"kernel{SOURCE_SUFFIX[kind]}"
    source.write_text(built.mod.imports[0].inspect_source("asm" if kind == "rocm" else ""))
    artifacts = {"amdgcn" if kind == "rocm" else "source": source.name}
    if kind == "rocm" and CAPTURED:
        (folder / "kernel.hsaco").write_bytes(CAPTURED[-1])
        artifacts["hsaco"] = "kernel.hsaco"
    for stage in ("ptx", "cubin") if kind == "cuda" and nvcc_version() else ():
        artifacts[stage] = nvcc(source, arch, stage).name
    return {"artifacts": artifacts, "signatures": signatures}


def compiled(step: Step, target_name: str, cache_dir: Path, progress=lambda: None) -> Entry:
    """The step's store entry for the target, built on a miss (progress() counts it)."""
    return store(cache_dir).fetch(entry_key(step.spec, target_name),
                                  lambda folder: progress() or build(step, target_name, folder))


def write_out(step: Step, target_name: str, out_dir: Path, cache_dir: Path, progress) -> dict:
    """The step's artifacts copied into out_dir under its nodes' names, and its manifest entry."""
    entry = compiled(step, target_name, cache_dir, progress)
    stem = safe_name("+".join(n.name for n in step.nodes), 100)
    artifacts = {stage: stem + Path(name).suffix for stage, name in entry.meta["artifacts"].items()}
    for stage, name in entry.meta["artifacts"].items():
        (out_dir / artifacts[stage]).write_bytes(entry.read(name))
    return {"kernel": stem, "op": step.op, "nodes": [n.name for n in step.nodes], "target": target_name,
            "tvm_version": TVM_VERSION, "artifacts": artifacts, "signatures": entry.meta["signatures"],
            "cache_hit": entry.hit}


def lower_graph(backend, graph: Graph, target_name: str, out_dir: Path, options, tiles) -> dict:
    """tiles(op, E, N, K, swiglu) -> (the GEMM's tile, where it came from), as plan() takes it."""
    # every target gets the CPU's op set in float32; other nodes are listed, not lowered
    skipped = [{"node": n.name, "op": n.op, "reason": why} for n, why in backend.unsupported(graph, cpu_device())]
    if len(skipped) == len(graph.nodes):
        raise BackendError(f"tvm can lower no node of '{graph.name}': {skipped[0]['reason'] if skipped else ''}")
    if target_name.startswith("rocm") and use_rocm(options.rocm_path) is None:
        raise BackendError("tvm: rocm target needs the ROCm device libraries (Debian: rocm-device-libs)")
    steps = plan(graph, tiles, skip={s["node"] for s in skipped})
    out_dir.mkdir(parents=True, exist_ok=True)
    with Progress(f"tvm {target_name}", len(steps)) as progress, native_stderr_filtered(NATIVE_NOISE):
        kernels = [write_out(s, target_name, out_dir, options.cache_root("tvm"), progress) for s in steps]
        built_for = str(target(target_name))
    extra = {"mcpu": host().cpu} if target_name == "cpu" else {}
    return write_manifest(out_dir, backend.name, target_name, graph, kernels, tvm_version=TVM_VERSION,
                          tvm_target=built_for, not_lowered=skipped, **extra)
