"""Ahead-of-time lowering: every kernel instance of a graph compiled by Triton for a named GPU target on
any machine (no GPU needed): PTX + cubin (NVIDIA) or AMDGCN + hsaco (AMD), intermediate stages on
request, manifest.json. With options.backward, the training kernels too (grouped GEMM dx/dw, SwiGLU,
combine and dispatch backward), each instance marked "pass": "backward" in the manifest. Compiled kernels
are cached on disk (cache_dir/lower/<key>/), keyed by kernel source, signature, constexprs, launch options,
target and Triton version."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ...ir import Graph
from ..base import BackendError, write_manifest
from . import kernels
from .launch import pow2, router_constexprs
from .launch_bwd import dw_tiles, dx_tiles
from .plan import fusable_swiglu, moe_chains
from .tuning import TuningCache, limits_for, variant

KERNEL_OPS = ("router", "dispatch", "grouped_matmul", "swiglu", "combine")
TL_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
TMA_TARGETS = ("cuda:sm_90", "cuda:sm_100")
MATRIX_INSTRUCTIONS = {"sm_80": "mma.sync", "sm_90": "wgmma", "sm_100": "tcgen05.mma", "gfx90a": "v_mfma",
                       "gfx942": "v_mfma", "gfx1100": "v_wmma"}


def gpu_target(target: str) -> GPUTarget:
    vendor, arch = target.split(":")
    if vendor == "cuda":
        return GPUTarget("cuda", int(arch.removeprefix("sm_")), 32)
    return GPUTarget("hip", arch, 32 if arch.startswith("gfx11") else 64)


def binary_stages(target: str) -> tuple[str, str]:
    return ("ptx", "cubin") if target.startswith("cuda") else ("amdgcn", "hsaco")


def instance(name: str, nodes: list[str], signature: dict, constexprs: dict, config: dict | None = None,
             num_warps: int = 4, num_stages: int = 3) -> dict:
    sig = dict(signature)
    sig.update({k: "constexpr" for k in constexprs})
    return {"kernel": name, "nodes": nodes, "signature": sig, "constexprs": constexprs, "tile_config": config,
            "num_warps": num_warps, "num_stages": num_stages, "pass": "forward"}


def node_instances(graph: Graph, target: str, tuning: TuningCache, tokens: int, backward: bool = False) -> list[dict]:
    """One kernel instance per (kernel, signature, constexprs, options) the executable launches for `tokens`
    tokens (the fused MoE chain as in inference; with backward, the training kernels too); nodes sharing
    one are merged."""
    values, fused, chains = graph.values(), fusable_swiglu(graph), moe_chains(graph)
    in_chain = {n.name: c for c in chains.values() for n in (c.dispatch, c.gate_up, c.swiglu, c.down, c.combine)}
    fused_away = {n.name for n in fused.values()}
    found: dict[str, dict] = {}
    for node in graph.nodes:
        if node.op not in KERNEL_OPS:
            continue
        dt = TL_DTYPES[values[node.inputs[0]].type.dtype.value]
        chain = in_chain.get(node.name)
        insts = [] if node.name in fused_away and not chain else kernels_of(
            node, values, dt, target, tuning, tokens, node.name in fused, chain)
        if backward and node.name not in fused_away:
            insts += backward_kernels_of(node, values, dt, target, tuning, tokens, node.name in fused)
        for inst in insts:
            k = json.dumps({x: inst[x] for x in ("kernel", "signature", "constexprs", "num_warps", "num_stages",
                                                 "pass")}, sort_keys=True)
            if k in found:
                found[k]["nodes"].append(node.name)
            else:
                found[k] = inst
    return list(found.values())


def gemm_config(tuning: TuningCache, target, values, node, swiglu: bool, gather: bool, rows: int):
    E, N, K = values[node.inputs[1]].type.shape
    dtype = values[node.inputs[0]].type.dtype.value
    arch = target.split(":")[1]
    cfg, _ = tuning.get(arch, variant(swiglu, gather), dtype, N, K, -(-rows // E), limits_for(arch),
                        2 if dtype != "float32" else 4)
    return cfg


def align_instances(n: list[str], E: int, cfg) -> list[dict]:
    sig = {"experts_ptr": "*i64", "cursor_ptr": "*i32", "slots_ptr": "*i32", "R": "i32"}
    return [instance("bucket_kernel", n, sig, {"PLACE": place, "BLOCK_R": 256}) for place in (False, True)] + [
        instance("align_kernel", n, {"counts_ptr": "*i32", "cursor_ptr": "*i32", "block_expert_ptr": "*i32",
                                     "NUM_BLOCKS": "i32"},
                 {"E": E, "BLOCK_E": pow2(E), "BLOCK_M": cfg.block_m, "BLOCK_B": 16})]


def moe_gemm_instance(n, node, values, dt, target, cfg, swiglu=False, a_div=1, scale=False) -> dict:
    E, N, K = values[node.inputs[1]].type.shape
    tma = target in TMA_TARGETS and (K * (4 if dt == "fp32" else 2)) % 16 == 0
    sig = {"a_ptr": f"*{dt}", "w": f"tensordesc<{dt}[{cfg.block_n}, {cfg.block_k}]>" if tma else f"*{dt}",
           "y_ptr": f"*{dt}", "slots_ptr": "*i32", "block_expert_ptr": "*i32", "scale_ptr": f"*{dt}", "ROWS": "i32",
           "N_OUT": "i32", "K": "i32"}
    precision = "tf32x3" if dt == "fp32" and target.startswith("cuda") else "ieee"
    ce = {"A_DIV": a_div, "SWIGLU": swiglu, "SCALE": scale, "W_TMA": tma, "PRECISION": precision,
          "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "GROUP_M": 8}
    return instance("moe_gemm_kernel", n, sig, ce, cfg.to_dict(), cfg.num_warps, cfg.num_stages)


def kernels_of(node, values, dt, target, tuning, tokens, fuse_swiglu, chain=None) -> list[dict]:
    a, n = node.attrs, [node.name]
    if node.op == "router":
        E, H = values[node.inputs[1]].type.shape
        sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "bias_ptr": f"*{dt}", "score_bias_ptr": "*fp32",
               "weights_ptr": f"*{dt}", "idx_ptr": "*i64", "logits_ptr": "*fp32", "H": "i32", "scaling": "fp32"}
        return [instance("router_kernel", n, sig, router_constexprs(E, H, node.inputs[2] is not None,
                                                                     node.inputs[3] is not None, **a))]
    if chain is not None:          # the fused MoE FFN: align once, two MoE GEMMs, combine is a torch sum
        K = values[chain.dispatch.inputs[1]].type.shape[-1]
        cfg_gu = gemm_config(tuning, target, values, chain.gate_up, True, True, tokens * K)
        cfg_d = gemm_config(tuning, target, values, chain.down, False, False, tokens * K)
        if node is chain.dispatch:
            return align_instances(n, a["num_experts"], cfg_gu)
        if node is chain.gate_up:
            return [moe_gemm_instance(n, node, values, dt, target, cfg_gu, True, K)]
        if node is chain.down:
            return [moe_gemm_instance(n, node, values, dt, target, cfg_d, scale=True)]
        return []
    if node.op == "dispatch":
        E, K = a["num_experts"], values[node.inputs[1]].type.shape[-1]
        return [instance("dispatch_kernel", n, {"idx_ptr": "*i64", "order_ptr": "*i64", "offsets_ptr": "*i64",
                                                "R": "i32"}, {"E": E, "BLOCK_E": pow2(E), "BLOCK_R": 64}),
                instance("gather_kernel", n, {"x_ptr": f"*{dt}", "order_ptr": "*i64", "rows_ptr": f"*{dt}",
                                              "H": "i32"}, {"TOP_K": K, "BLOCK_H": 256})]
    if node.op == "grouped_matmul":
        cfg = gemm_config(tuning, target, values, node, fuse_swiglu, False, tokens)
        return align_instances(n, values[node.inputs[1]].type.shape[0], cfg) + [
            moe_gemm_instance(n, node, values, dt, target, cfg, fuse_swiglu)]
    if node.op == "swiglu":
        return [instance("swiglu_kernel", n, {"x_ptr": f"*{dt}", "y_ptr": f"*{dt}", "F": "i32"}, {"BLOCK_F": 256})]
    if node.op == "combine":
        K = values[node.inputs[2]].type.shape[-1]
        return [instance("inverse_kernel", n, {"order_ptr": "*i64", "inverse_ptr": "*i64", "R": "i32"},
                         {"BLOCK_R": 256}),
                instance("combine_kernel", n, {"y_ptr": f"*{dt}", "inverse_ptr": "*i64", "w_ptr": f"*{dt}",
                                               "out_ptr": f"*{dt}", "H": "i32"}, {"TOP_K": K, "BLOCK_H": 256})]
    raise BackendError(f"triton: no kernel for node '{node.name}' (op {node.op})")


def backward_kernels_of(node, values, dt, target, tuning, tokens, fuse_swiglu) -> list[dict]:
    """The kernels .autograd launches in the backward of this node (the router's backward is torch)."""
    n, out = [node.name], []
    if node.op == "grouped_matmul":
        E, N, K = values[node.inputs[1]].type.shape
        cfg = gemm_config(tuning, target, values, node, fuse_swiglu, False, tokens)
        precision = "tf32x3" if dt == "fp32" and target.startswith("cuda") else "ieee"
        sig = {"dy_ptr": f"*{dt}", "w_ptr": f"*{dt}", "dx_ptr": f"*{dt}", "offsets_ptr": "*i64", "N": "i32",
               "K": "i32"}
        ce = {"E": E, "PRECISION": precision, "BLOCK_E": pow2(E), **dx_tiles(cfg)}
        out.append(instance("grouped_gemm_dx_kernel", n, sig, ce, cfg.to_dict(), cfg.num_warps, cfg.num_stages))
        sig = {"dy_ptr": f"*{dt}", "x_ptr": f"*{dt}", "dw_ptr": f"*{dt}", "offsets_ptr": "*i64", "N": "i32",
               "K": "i32"}
        ce = {"PRECISION": precision, **dw_tiles(cfg)}
        out.append(instance("grouped_gemm_dw_kernel", n, sig, ce, cfg.to_dict(), cfg.num_warps, cfg.num_stages))
        if fuse_swiglu:   # the backward recomputes gate_up with the plain GEMM, then the SwiGLU derivative
            plain = gemm_config(tuning, target, values, node, False, False, tokens)
            out += [moe_gemm_instance(n, node, values, dt, target, plain),
                    instance("swiglu_bwd_kernel", n, {"gu_ptr": f"*{dt}", "dh_ptr": f"*{dt}", "dgu_ptr": f"*{dt}",
                                                      "F": "i32"}, {"BLOCK_F": 256})]
    elif node.op == "swiglu":
        out.append(instance("swiglu_bwd_kernel", n, {"gu_ptr": f"*{dt}", "dh_ptr": f"*{dt}", "dgu_ptr": f"*{dt}",
                                                     "F": "i32"}, {"BLOCK_F": 256}))
    elif node.op == "combine":
        K = values[node.inputs[2]].type.shape[-1]
        sig = {"y_ptr": f"*{dt}", "order_ptr": "*i64", "w_ptr": f"*{dt}", "dout_ptr": f"*{dt}", "dy_ptr": f"*{dt}",
               "dw_ptr": f"*{dt}", "H": "i32"}
        out.append(instance("combine_bwd_kernel", n, sig, {"TOP_K": K, "BLOCK_H": 256}))
    elif node.op == "dispatch":
        K = values[node.inputs[1]].type.shape[-1]
        out.append(instance("dispatch_bwd_kernel", n, {"drows_ptr": f"*{dt}", "inverse_ptr": "*i64",
                                                       "dx_ptr": f"*{dt}", "H": "i32"}, {"TOP_K": K, "BLOCK_H": 256}))
    for inst in out:
        inst["pass"] = "backward"
    return out


def cache_key(inst: dict, target: str, stages: tuple[str, ...]) -> str:
    src = getattr(kernels, inst["kernel"]).cache_key      # the kernel's source and every @jit helper it calls
    blob = json.dumps([src, {k: inst[k] for k in ("signature", "constexprs", "num_warps", "num_stages")},
                       target, sorted(stages), triton.__version__], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def compile_instance(inst: dict, target: str, stages: tuple[str, ...], entry: Path) -> dict:
    """Compiles one kernel instance into the cache entry directory; returns its metadata."""
    fn = getattr(kernels, inst["kernel"])
    src = ASTSource(fn=fn, signature=inst["signature"], constexprs=inst["constexprs"])
    try:
        compiled = triton.compile(src, target=gpu_target(target),
                                  options={"num_warps": inst["num_warps"], "num_stages": inst["num_stages"],
                                           "enable_fp_fusion": True})
    except Exception as err:
        raise BackendError(f"triton: compiling {inst['kernel']} for {target} failed: {err}".splitlines()[0]) from err
    entry.mkdir(parents=True, exist_ok=True)
    files = {}
    for stage in (*stages, *binary_stages(target)):
        data = compiled.asm[stage]
        (entry / stage).write_bytes(data if isinstance(data, bytes) else data.encode())
        files[stage] = stage
    meta = {"shared_memory": compiled.metadata.shared, "name": compiled.metadata.name, "stages": files}
    (entry / "meta.json").write_text(json.dumps(meta))
    return meta


def count_matrix_instructions(text: str, target: str) -> int:
    return text.count(MATRIX_INSTRUCTIONS[target.split(":")[1]])


def lower_graph(graph: Graph, target: str, out_dir: Path, options, not_lowered: list[dict]) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_root = options.cache_path() / "lower"
    tuning = TuningCache(options.cache_path())
    asm_stage = binary_stages(target)[0]
    entries, hits = [], 0
    for i, inst in enumerate(node_instances(graph, target, tuning, options.tokens, options.backward)):
        entry = cache_root / cache_key(inst, target, options.stages)
        hit = (entry / "meta.json").exists()
        meta = json.loads((entry / "meta.json").read_text()) if hit else compile_instance(
            inst, target, options.stages, entry)
        hits += hit
        kid = f"{i:02d}_{inst['kernel']}"
        artifacts = {}
        for stage in meta["stages"]:
            name = f"{kid}.{stage}"
            shutil.copyfile(entry / stage, out_dir / name)
            artifacts[stage] = name
        asm = (out_dir / artifacts[asm_stage]).read_text()
        size = sum((out_dir / name).stat().st_size for name in artifacts.values())
        entries.append({**inst, "id": kid, "target": target, "symbol": meta["name"], "bytes": size,
                        "shared_memory": meta["shared_memory"], "artifacts": artifacts, "cache_hit": hit,
                        "matrix_instructions": {MATRIX_INSTRUCTIONS[target.split(":")[1]]:
                                                count_matrix_instructions(asm, target)}})
    return write_manifest(out_dir, "triton", target, graph, entries, triton_version=triton.__version__,
                          cache={"dir": str(cache_root), "hits": hits, "misses": len(entries) - hits},
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
