"""IR nodes -> TVM kernels, and how to run them: one `Step` per node (or per fused pair of nodes).

A step names its kernels (PrimFuncs, CPU or GPU flavour), a JSON-able spec that keys the compile
cache, and `run(call, args)`, which takes torch tensors and calls kernels through `call(name,
*tensors)`; `call` is the CPU (DLPack) or OpenCL (pyopencl) launcher. Token counts are symbolic in
every kernel, so one compile serves every batch size. Shapes: T tokens, H hidden, E experts,
K top-k, R = T*K rows, N out-features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ...ir import IRError, Node
from ...ir.rewrites import swiglu_epilogues
from .kernels import dense
from .kernels import gemm as gemm_kernels
from .kernels import moe as moe_kernels
from .kernels.attention import attention_step
from .kernels.gemm import CpuTile, GpuTile
from .kernels.loss import cross_entropy_step


@dataclass
class Step:
    op: str
    nodes: list[Node]
    spec: dict
    kernels: Callable[[bool, object], dict]            # (gpu, target) -> {name: PrimFunc}
    run: Callable[..., list]                            # (call, args) -> outputs
    launch: dict = field(default_factory=dict)          # kernel name -> sizes -> (grid, block) on a GPU
    tuning: str = "n/a"                                 # where the GEMM's tile came from
    tile: object = None


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def zeros(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float32)


def check_offsets(offsets: torch.Tensor, rows: int, experts: int, where: str):
    bounds = offsets.tolist()
    if len(bounds) != experts + 1 or bounds[0] != 0 or bounds[-1] != rows or any(
            a > b for a, b in zip(bounds, bounds[1:])):
        raise IRError(f"offsets {bounds[:8]}... are not a non-decreasing split of {rows} rows over {experts} "
                      "experts", node=where, op="grouped_matmul")


def gmm_step(op: str, nodes: list[Node], E: int, N: int, K: int, tile: CpuTile | GpuTile, tuning: str,
             swiglu: bool, bias: bool) -> Step:
    """tile: a CpuTile for the CPU kernel, a GpuTile for the GPU one (the plan is made for one of them)."""
    F = N // 2 if swiglu else N
    gpu_tile = isinstance(tile, GpuTile)
    nb = 0 if gpu_tile else tile.fit(F).NB

    def kernels(gpu, target):
        make = gemm_kernels.gmm_gpu if gpu else gemm_kernels.gmm_cpu
        return {"gmm": make(E, N, K, tile, swiglu)}

    def run(call, x, w, offsets, b=None):
        x2 = flat(x).contiguous()
        check_offsets(offsets, x2.shape[0], E, nodes[0].name if nodes else op)
        y = torch.empty(x2.shape[0], F, dtype=torch.float32)
        call("gmm", x2, call.weight(w, E, nb), offsets, zeros(N) if b is None else b, y)
        return [y.reshape(*x.shape[:-1], F)]

    edge = tile.edge if gpu_tile else 0
    launch = {"gmm": lambda s: ((s["R"] // edge + E, (F + edge - 1) // edge), (edge, edge))} if gpu_tile else {}
    spec = {"op": op, "E": E, "N": N, "K": K, "swiglu": swiglu, "bias": bias, "tile": tile.__dict__}
    return Step(op, nodes, spec, kernels, run, launch, tuning, tile)


def linear_step(node: Node, N: int, K: int, tile: CpuTile | GpuTile, tuning: str) -> Step:
    """linear is the grouped GEMM with one expert and one segment of all the tokens."""
    step = gmm_step("linear", [node], 1, N, K, tile, tuning, False, len(node.inputs) > 2 and node.inputs[2] is not None)
    gmm_run = step.run

    def run(call, x, w, b=None):
        rows = x.numel() // K
        return gmm_run(call, x, w, torch.tensor([0, rows], dtype=torch.int64), b)

    step.run = run
    return step


def threads(n):
    return ((n + moe_kernels.THREADS - 1) // moe_kernels.THREADS,), (moe_kernels.THREADS,)


def router_step(node: Node, H: int, E: int, tile: CpuTile | GpuTile) -> Step:
    a = node.attrs
    K = a["top_k"]
    logits_step = linear_step(node, E, H, tile, "n/a")

    def kernels(gpu, target):
        sel = moe_kernels.router_select(E, K, a["scoring"], a["num_groups"], a["top_groups"], a["group_score"],
                                        a["normalize"], a["scaling"], gpu)
        return {**logits_step.kernels(gpu, target), "select": sel}

    def run(call, x, w, bias=None, score_bias=None):
        x2 = flat(x).contiguous()
        (logits,) = logits_step.run(call, x2, w, bias)
        weights = torch.empty(x2.shape[0], K, dtype=torch.float32)
        indices = torch.empty(x2.shape[0], K, dtype=torch.int64)
        scores, selection = (torch.empty(x2.shape[0], E, dtype=torch.float32) for _ in range(2))
        call("select", logits, zeros(E) if score_bias is None else score_bias.float(), weights, indices,
             scores, selection)
        lead = x.shape[:-1]
        return [weights.reshape(*lead, K), indices.reshape(*lead, K), logits.reshape(*lead, E)]

    launch = {**logits_step.launch, "select": lambda s: threads(s["n"])}
    return Step("router", [node], {"op": "router", "H": H, "E": E, "tile": tile.__dict__, **a}, kernels, run, launch)


def dispatch_step(node: Node, H: int, E: int, K: int) -> Step:
    def kernels(gpu, target):
        return {"sort": moe_kernels.dispatch_sort(E, gpu), "gather": moe_kernels.gather_rows(H, K, gpu)}

    def run(call, x, indices):
        flat_R = indices.reshape(-1).contiguous()
        if flat_R.numel() and (flat_R.min() < 0 or flat_R.max() >= E):
            raise IRError(f"expert index out of range [0, {E})", node=node.name, op="dispatch")
        offsets = torch.empty(E + 1, dtype=torch.int64)
        order = torch.empty(flat_R.shape[0], dtype=torch.int64)
        call("sort", flat_R, offsets, order)
        rows = torch.empty(flat_R.shape[0], H, dtype=torch.float32)
        call("gather", flat(x).contiguous(), order, rows)
        return [rows, offsets, order]

    launch = {"sort": lambda s: ((1,), (E,)), "gather": lambda s: threads(s["R"])}
    return Step("dispatch", [node], {"op": "dispatch", "H": H, "E": E, "K": K}, kernels, run, launch)


def swiglu_step(node: Node, F: int) -> Step:
    def run(call, x):
        x2 = flat(x).contiguous()
        y = torch.empty(x2.shape[0], F, dtype=torch.float32)
        call("swiglu", x2, y)
        return [y.reshape(*x.shape[:-1], F)]

    return Step("swiglu", [node], {"op": "swiglu", "F": F},
                lambda gpu, target: {"swiglu": moe_kernels.swiglu(F, gpu)}, run,
                {"swiglu": lambda s: ((s["n"],), (moe_kernels.THREADS,))})


def combine_step(node: Node, K: int, H: int) -> Step:
    def kernels(gpu, target):
        return {"invert": moe_kernels.inverse_order(gpu), "combine": moe_kernels.combine(K, H, gpu)}

    def run(call, y, order, weights):
        inverse = torch.empty_like(order)
        call("invert", order.contiguous(), inverse)
        w2 = weights.reshape(-1, K).float().contiguous()
        out = torch.empty(w2.shape[0], H, dtype=torch.float32)
        call("combine", y.contiguous(), inverse, w2, out)
        return [out.reshape(*weights.shape[:-1], H)]

    launch = {"invert": lambda s: threads(s["R"]), "combine": lambda s: ((s["n"],), (moe_kernels.THREADS,))}
    return Step("combine", [node], {"op": "combine", "K": K, "H": H}, kernels, run, launch)


def dense_step(node: Node, types: dict) -> Step:
    in_shapes = [list(types[i].shape) for i in node.inputs if i is not None]
    out_shape = list(node.outputs[0].type.shape)

    def kernels(gpu, target):
        tensors = dense.build(node.op, node.attrs, in_shapes, out_shape)
        return {"main": dense.prim_func(tensors, gpu, target)}

    def run(call, *args):
        args = [a.contiguous() for a in args if a is not None]
        if node.op in ("add", "mul"):
            shape = torch.broadcast_shapes(args[0].shape, args[1].shape)
        elif node.op == "embedding":
            if args[0].numel() and (args[0].min() < 0 or args[0].max() >= args[1].shape[0]):
                raise IRError(f"ids out of range [0, {args[1].shape[0]})", node=node.name, op="embedding")
            shape = (*args[0].shape, args[1].shape[1])
        else:
            shape = args[0].shape
        y = torch.empty(shape, dtype=torch.float32)
        call("main", *args, y)
        return [y]

    spec = {"op": node.op, "in": in_shapes, "out": out_shape, **node.attrs}
    return Step(node.op, [node], spec, kernels, run)


def plan(graph, tile_for: Callable[[str, int, int, int, bool], tuple[CpuTile | GpuTile, str]],
         skip=frozenset()) -> list[Step]:
    """One step per node (except those named in skip); grouped_matmul feeding only a swiglu runs as one
    kernel with the SwiGLU epilogue. tile_for(op, E, N, K, swiglu) gives the CPU or GPU tile and where it
    came from (tuning.tile_for)."""
    types = graph.types()
    epilogues = swiglu_epilogues(graph)
    fused: set[str] = set(skip)
    steps = []
    for node in graph.nodes:
        if node.name in fused:
            continue
        out = node.outputs[0].name
        if node.op == "grouped_matmul":
            E, N, K = types[node.inputs[1]].shape
            swi = node.name in epilogues
            nodes = [node, epilogues[node.name]] if swi else [node]
            fused.update(n.name for n in nodes[1:])
            tile, how = tile_for("grouped_matmul", E, N, K, swi)
            steps.append(gmm_step("grouped_matmul", nodes, E, N, K, tile, how, swi, False))
        elif node.op == "linear":
            N, K = types[node.inputs[1]].shape
            tile, how = tile_for("linear", 1, N, K, False)
            steps.append(linear_step(node, N, K, tile, how))
        elif node.op == "router":
            E, H = types[node.inputs[1]].shape
            steps.append(router_step(node, H, E, tile_for("linear", 1, E, H, False)[0]))
        elif node.op == "dispatch":
            steps.append(dispatch_step(node, types[node.inputs[0]].shape[-1], node.attrs["num_experts"],
                                       types[node.inputs[1]].shape[-1]))
        elif node.op == "swiglu":
            steps.append(swiglu_step(node, types[out].shape[-1]))
        elif node.op == "combine":
            steps.append(combine_step(node, types[node.inputs[2]].shape[-1], types[out].shape[-1]))
        elif node.op == "attention":
            steps.append(attention_step(node, Step))
        elif node.op == "cross_entropy":
            steps.append(cross_entropy_step(node, types[node.inputs[0]].shape[-1], Step))
        else:
            steps.append(dense_step(node, types))
    return steps
