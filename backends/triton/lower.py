"""Ahead-of-time lowering on any machine: PTX + cubin or AMDGCN + hsaco and manifest.json for every kernel instance
the executable launches on meta tensors, so what is lowered is what runs (options.backward: training too)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import mangle_type

from ...ir import Graph
from ..base import BackendError, write_manifest
from ..cache import Store, make_key
from ..devices import Device
from . import OPS, launch
from .executable import TritonExecutable
from .kernels import BY_NAME

MATRIX_INSTRUCTIONS = {"sm_80": "mma.sync", "sm_90": "wgmma", "sm_100": "tcgen05.mma", "gfx90a": "v_mfma",
                       "gfx942": "v_mfma", "gfx1100": "v_wmma"}
TILES = {"BLOCK_M": "block_m", "BLOCK_N": "block_n", "BLOCK_K": "block_k"}     # the GEMM tile constexprs


class Recorder:
    """Takes the launches made on meta tensors: one instance per distinct launch, with its nodes and pass."""

    def __init__(self, target: str):
        self.target, self.phase, self.nodes, self.launches = target, "forward", [], {}

    def record(self, name: str, *args, num_warps=4, num_stages=3, **constexprs):
        params = [p.name for p in BY_NAME[name].params if not p.is_constexpr]
        inst = {"kernel": name, "signature": {**{p: mangle_type(a) for p, a in zip(params, args)},
                                              **{k: "constexpr" for k in constexprs}},
                "constexprs": constexprs, "num_warps": num_warps, "num_stages": num_stages, "pass": self.phase,
                "tile_config": {TILES[k]: v for k, v in constexprs.items() if k in TILES} or None}
        found = self.launches.setdefault(json.dumps(inst, sort_keys=True), {**inst, "nodes": []})
        found["nodes"] += [n for n in self.nodes if n not in found["nodes"]]


def meta_env(graph: Graph, tokens: int, grads: bool) -> dict:
    """A meta tensor (shape and dtype, no data) for every value; the token dimension is `tokens` long."""
    first = next((d for v in graph.inputs[:1] for d in reversed(v.type.shape) if isinstance(d, str)), None)
    env = {}
    for name, v in graph.values().items():
        shape = [d if isinstance(d, int) else tokens if d == first else 1 for d in v.type.shape]
        t = torch.empty(shape, dtype=getattr(torch, v.type.dtype.value), device="meta")
        env[name] = t.requires_grad_() if grads and t.is_floating_point() else t
    return env


def instances(graph: Graph, target: str, device: Device, options) -> list[dict]:
    """Every kernel instance the executable launches on the target for options.tokens tokens."""
    exe, tokens = TritonExecutable(graph, device, options), options.tokens
    recorder = launch.recorder = Recorder(target)
    try:
        exe.execute(meta_env(graph, tokens, False), grads=False)
        if options.backward:
            recorder.phase, env = "training", meta_env(graph, tokens, True)
            exe.execute(env, grads=True)
            outs = [env[v.name] for n in graph.nodes if n.op in OPS for v in n.outputs if env[v.name].grad_fn]
            recorder.phase, recorder.nodes = "backward", [n.name for n in graph.nodes if n.op in OPS]
            torch.autograd.backward([t.float().sum() for t in outs])
    finally:
        launch.recorder = None
    return list(recorder.launches.values())


def compile_instance(inst: dict, target: str, stages: tuple[str, ...], entry: Path) -> dict:
    """Compiles one kernel instance into the cache entry folder; returns its metadata."""
    vendor, arch = target.split(":")
    gpu = GPUTarget("cuda", int(arch.removeprefix("sm_")), 32) if vendor == "cuda" else \
        GPUTarget("hip", arch, 32 if arch.startswith("gfx11") else 64)
    src = ASTSource(fn=BY_NAME[inst["kernel"]], signature=inst["signature"], constexprs=inst["constexprs"])
    try:
        compiled = triton.compile(src, target=gpu, options={"num_warps": inst["num_warps"],
                                                            "num_stages": inst["num_stages"], "enable_fp_fusion": True})
    except Exception as err:
        raise BackendError(f"triton: compiling {inst['kernel']} for {target} failed: {err}".splitlines()[0]) from err
    for stage in stages:
        data = compiled.asm[stage]
        (entry / stage).write_bytes(data if isinstance(data, bytes) else data.encode())
    return {"shared_memory": compiled.metadata.shared, "name": compiled.metadata.name, "stages": list(stages)}


def lower_graph(graph: Graph, target: str, device: Device, out_dir: Path, options, not_lowered: list) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    store, instr = Store(options.cache_root("triton") / "lower", "triton"), MATRIX_INSTRUCTIONS[target.split(":")[1]]
    binary = ("ptx", "cubin") if target.startswith("cuda") else ("amdgcn", "hsaco")
    stages, entries = (*options.stages, *binary), []
    for i, inst in enumerate(instances(graph, target, device, options)):
        key = make_key(source=BY_NAME[inst["kernel"]].cache_key,   # its source and the @jit helpers it calls
                       instance={k: inst[k] for k in ("signature", "constexprs", "num_warps", "num_stages")},
                       target=target, stages=sorted(options.stages), triton=triton.__version__)
        entry = store.fetch(key, lambda folder, inst=inst: compile_instance(inst, target, stages, folder))
        kid = f"{i:02d}_{inst['kernel']}"
        artifacts = {stage: f"{kid}.{stage}" for stage in entry.meta["stages"]}
        for stage, name in artifacts.items():
            (out_dir / name).write_bytes(entry.read(stage))
        entries.append({**inst, "id": kid, "target": target, "symbol": entry.meta["name"], "artifacts": artifacts,
                        "bytes": sum((out_dir / name).stat().st_size for name in artifacts.values()),
                        "shared_memory": entry.meta["shared_memory"], "cache_hit": entry.hit,
                        "matrix_instructions": {instr: (out_dir / artifacts[binary[0]]).read_text().count(instr)}})
    hits = sum(e["cache_hit"] for e in entries)
    return write_manifest(out_dir, "triton", target, graph, entries, triton_version=triton.__version__,
                          cache={"hits": hits, "misses": len(entries) - hits}, not_lowered=not_lowered)
