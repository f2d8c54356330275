"""Ahead-of-time lowering: every kernel instance the executable would launch, compiled by Triton for a named
GPU target on any machine (no GPU needed): PTX + cubin (NVIDIA) or AMDGCN + hsaco (AMD), intermediate
stages on request, manifest.json. The instances are found by running the executable on meta tensors with
the launches recorded, so what is lowered is what runs. With options.backward, the training kernels too,
marked "pass": "training" (op-by-op forward) and "backward". Compiled kernels
are kept in the backends' trusted artifact store (cache_dir/lower/), keyed by kernel source, signature,
constexprs, launch options, target and Triton version, and verified against their digests on every load."""

from __future__ import annotations

import functools
from functools import cache
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ...ir import Graph
from ..base import BackendError, write_manifest
from ..cache import Store, make_key
from ..devices import Device
from . import OPS, kernels, launch
from .executable import TritonExecutable
from .tuning import TuningCache

MATRIX_INSTRUCTIONS = {"sm_80": "mma.sync", "sm_90": "wgmma", "sm_100": "tcgen05.mma", "gfx90a": "v_mfma",
                       "gfx942": "v_mfma", "gfx1100": "v_wmma"}


def gpu_target(target: str) -> GPUTarget:
    vendor, arch = target.split(":")
    if vendor == "cuda":
        return GPUTarget("cuda", int(arch.removeprefix("sm_")), 32)
    return GPUTarget("hip", arch, 32 if arch.startswith("gfx11") else 64)


def binary_stages(target: str) -> tuple[str, str]:
    return ("ptx", "cubin") if target.startswith("cuda") else ("amdgcn", "hsaco")


def meta_env(graph: Graph, tokens: int, grads: bool) -> dict:
    """A meta tensor (shape and dtype, no data) for every value; the token dimension is `tokens` long."""
    import torch

    first = next((d for d in reversed(graph.inputs[0].type.shape) if isinstance(d, str)), None) if graph.inputs \
        else None
    env = {}
    for name, v in graph.values().items():
        shape = [d if isinstance(d, int) else tokens if d == first else 1 for d in v.type.shape]
        t = torch.empty(shape, dtype=getattr(torch, v.type.dtype.value), device="meta")
        env[name] = t.requires_grad_() if grads and t.is_floating_point() else t
    return env


def node_instances(graph: Graph, target: str, cache_dir: Path, tokens: int, backward: bool = False) -> list[dict]:
    """Every kernel instance the executable launches on the target for `tokens` tokens, found by running it
    on meta tensors with the launches recorded (the fused MoE chain as in inference; with backward, the
    training forward and the backward kernels too), nodes sharing one instance merged."""
    import torch

    kind, arch = target.split(":")
    exe = TritonExecutable(graph, Device(kind, 0, "", "", arch, 0, ""), TuningCache(cache_dir))
    recorder = launch.Recorder(target)
    launch.RECORDING.append(recorder)
    try:
        exe.execute(meta_env(graph, tokens, False), grads=False, only=frozenset(OPS))
        if backward:
            recorder.phase, env = "training", meta_env(graph, tokens, True)
            exe.execute(env, grads=True, only=frozenset(OPS))
            outs = [env[v.name] for n in graph.nodes if n.op in OPS for v in n.outputs if env[v.name].grad_fn]
            recorder.phase = "backward"
            launch.attribute([n.name for n in graph.nodes if n.op in OPS])
            torch.autograd.backward([t.float().sum() for t in outs])
    finally:
        launch.RECORDING.remove(recorder)
    return [{**inst, "tile_config": {k.removeprefix("BLOCK_").lower(): v for k, v in inst["constexprs"].items()
                                     if k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")} or None}
            for inst in recorder.launches.values()]


def cache_key(inst: dict, target: str, stages: tuple[str, ...]) -> str:
    return make_key(source=getattr(kernels, inst["kernel"]).cache_key,   # its source and every @jit helper it calls
                    instance={k: inst[k] for k in ("signature", "constexprs", "num_warps", "num_stages")},
                    target=target, stages=sorted(stages), triton=triton.__version__)


@cache
def store(root: Path) -> Store:
    return Store(root, "triton")


def compile_instance(inst: dict, target: str, stages: tuple[str, ...], entry: Path) -> dict:
    """Compiles one kernel instance into the cache entry folder; returns its metadata."""
    fn = getattr(kernels, inst["kernel"])
    src = ASTSource(fn=fn, signature=inst["signature"], constexprs=inst["constexprs"])
    try:
        compiled = triton.compile(src, target=gpu_target(target),
                                  options={"num_warps": inst["num_warps"], "num_stages": inst["num_stages"],
                                           "enable_fp_fusion": True})
    except Exception as err:
        raise BackendError(f"triton: compiling {inst['kernel']} for {target} failed: {err}".splitlines()[0]) from err
    files = {}
    for stage in (*stages, *binary_stages(target)):
        data = compiled.asm[stage]
        (entry / stage).write_bytes(data if isinstance(data, bytes) else data.encode())
        files[stage] = stage
    return {"shared_memory": compiled.metadata.shared, "name": compiled.metadata.name, "stages": files}


def count_matrix_instructions(text: str, target: str) -> int:
    return text.count(MATRIX_INSTRUCTIONS[target.split(":")[1]])


def lower_graph(graph: Graph, target: str, out_dir: Path, options, not_lowered: list[dict]) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_root = options.cache_path() / "lower"
    asm_stage = binary_stages(target)[0]
    entries, hits = [], 0
    for i, inst in enumerate(node_instances(graph, target, options.cache_path(), options.tokens, options.backward)):
        entry = store(cache_root).fetch(cache_key(inst, target, options.stages),
                                        functools.partial(compile_instance, inst, target, options.stages))
        meta, hit = entry.meta, entry.hit
        hits += hit
        kid = f"{i:02d}_{inst['kernel']}"
        artifacts = {}
        for stage in meta["stages"]:
            name = f"{kid}.{stage}"
            (out_dir / name).write_bytes(entry.read(stage))
            artifacts[stage] = name
        asm = (out_dir / artifacts[asm_stage]).read_text()
        size = sum((out_dir / name).stat().st_size for name in artifacts.values())
        entries.append({**inst, "id": kid, "target": target, "symbol": meta["name"], "bytes": size,
                        "shared_memory": meta["shared_memory"], "artifacts": artifacts, "cache_hit": hit,
                        "matrix_instructions": {MATRIX_INSTRUCTIONS[target.split(":")[1]]:
                                                count_matrix_instructions(asm, target)}})
    return write_manifest(out_dir, "triton", target, graph, entries, triton_version=triton.__version__,
                          cache={"hits": hits, "misses": len(entries) - hits},
                          not_lowered=not_lowered)


def summary(manifest: dict) -> str:
    """One line: target, kernels, artifact bytes, matrix instructions in the grouped GEMMs, cache hits."""
    total = sum(k.get("bytes", 0) for k in manifest["kernels"])
    gemm = [k for k in manifest["kernels"] if k["kernel"] == "moe_gemm_kernel"]
    instr = {}
    for k in gemm:
        for name, count in k["matrix_instructions"].items():
            instr[name] = instr.get(name, 0) + count
    found = ", ".join(f"{n} x{c}" for n, c in instr.items()) or "none"
    cache = manifest.get("cache", {})
    return (f"{manifest['target']}: {len(manifest['kernels'])} kernels, {total} bytes, grouped GEMM matrix "
            f"instructions: {found}, cache hits {cache.get('hits', 0)}/{len(manifest['kernels'])}")
