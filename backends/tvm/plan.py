"""IR nodes -> steps, one per node (or fused pair). A step names its kernels (CPU or GPU flavour), a JSON-able
spec that keys the compile cache, and run(call, *args) on torch tensors, which calls kernels through
`call(name, *inputs) -> outputs` (the CPU's DLPack or OpenCL launcher, outputs allocated from the signature)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...ir import IRError, Node
from ...ir.meanings import check_offsets
from ...ir.rewrites import swiglu_epilogues
from .kernels import attention, dense, loss, moe, te_kernel
from .kernels.gemm import CpuTile, GpuTile, gmm_cpu, gmm_gpu


@dataclass
class Step:
    op: str
    nodes: list[Node]
    spec: dict
    kernels: Callable[[bool], dict]                     # gpu -> {name: PrimFunc}
    run: Callable[..., list]                            # (call, *args) -> outputs
    tuning: str = "n/a"                                 # where the GEMM's tile came from
    tile: object = None


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


def check_range(t: torch.Tensor, high: int, what: str, node: Node):
    if t.numel() and (t.min() < 0 or t.max() >= high):
        raise IRError(f"{what} out of range [0, {high})", node=node.name, op=node.op)


def gmm_step(op: str, nodes: list[Node], E: int, N: int, K: int, tile: CpuTile | GpuTile, tuning: str,
             swiglu: bool, bias: bool) -> Step:
    """A CpuTile plans the CPU kernel, a GpuTile the GPU one."""
    F = N // 2 if swiglu else N

    def kernels(gpu):
        return {"gmm": (gmm_gpu if gpu else gmm_cpu)(E, N, K, tile, swiglu)}

    def run(call, x, w, offsets, b=None):
        x2, nb = flat(x), 0 if isinstance(tile, GpuTile) else tile.fit(F).NB
        check_offsets(offsets.tolist(), x2.shape[0], E, nodes[0].name if nodes else op)
        (y,) = call("gmm", x2, call.weight(w, E, nb), offsets, torch.zeros(N) if b is None else b)
        return [y.reshape(*x.shape[:-1], F)]

    spec = {"op": op, "E": E, "N": N, "K": K, "swiglu": swiglu, "bias": bias, "tile": tile.__dict__}
    return Step(op, nodes, spec, kernels, run, tuning, tile)


def linear_step(node: Node, N: int, K: int, tile: CpuTile | GpuTile, tuning: str) -> Step:
    """The grouped GEMM with one expert, all the rows its one segment."""
    gmm = gmm_step("linear", [node], 1, N, K, tile, tuning, False, len(node.inputs) > 2 and node.inputs[2] is not None)
    gmm_run = gmm.run
    gmm.run = lambda call, x, w, b=None: gmm_run(call, x, w, torch.tensor([0, x.numel() // K]), b)
    return gmm


def router_step(node: Node, E: int, H: int, tile: CpuTile | GpuTile) -> Step:
    a = node.attrs
    K, logits_step = a["top_k"], linear_step(node, E, H, tile, "n/a")

    def kernels(gpu):
        sel = moe.router_select(E, K, a["scoring"], a["num_groups"], a["top_groups"], a["group_score"],
                                a["normalize"], a["scaling"], gpu)
        return {**logits_step.kernels(gpu), "select": sel}

    def run(call, x, w, bias=None, score_bias=None):
        (logits,) = logits_step.run(call, flat(x), w, bias)
        weights, indices, _, _ = call("select", logits, torch.zeros(E) if score_bias is None else score_bias.float())
        lead = x.shape[:-1]
        return [weights.reshape(*lead, K), indices.reshape(*lead, K), logits.reshape(*lead, E)]

    return Step("router", [node], {"op": "router", "H": H, "E": E, "tile": tile.__dict__, **a}, kernels, run)


def dispatch_step(node: Node, shapes: list) -> Step:
    H, E, K = shapes[0][-1], node.attrs["num_experts"], shapes[1][-1]

    def kernels(gpu):
        return {"sort": moe.dispatch_sort(E, gpu), "gather": te_kernel(moe.gather_rows(H, K), gpu)}

    def run(call, x, indices):
        flat_R = indices.reshape(-1)
        check_range(flat_R, E, "expert index", node)
        offsets, order = call("sort", flat_R)
        return [*call("gather", flat(x), order), offsets, order]

    return Step("dispatch", [node], {"op": "dispatch", "H": H, "E": E, "K": K}, kernels, run)


def combine_step(node: Node, shapes: list) -> Step:
    H, K = shapes[0][-1], shapes[2][-1]

    def kernels(gpu):
        return {"invert": moe.inverse_order(gpu), "combine": te_kernel(moe.combine(K, H), gpu)}

    def run(call, y, order, weights):
        (out,) = call("combine", y, *call("invert", order), weights.reshape(-1, K).float())
        return [out.reshape(*weights.shape[:-1], H)]

    return Step("combine", [node], {"op": "combine", "K": K, "H": H}, kernels, run)


def attention_step(node: Node, _shapes: list) -> Step:
    a = node.attrs
    N, KV, D, theta, eps = a["num_heads"], a["num_kv_heads"], a["head_dim"], a["rope_theta"], a["eps"]
    q_norm, k_norm = (len(node.inputs) > i and node.inputs[i] is not None for i in (3, 4))

    def kernels(gpu):
        return {"prep_q": attention.prep(N, D, theta, eps, q_norm, gpu),
                "prep_k": attention.prep(KV, D, theta, eps, k_norm, gpu),
                "attend": attention.attend(N, KV, D, a["causal"], gpu)}

    def run(call, q, k, v, wq=None, wk=None):
        q, k, v = (t.float() for t in (q, k, v))
        if q.numel() == 0:                      # TVM rejects the strides torch gives empty tensors
            return [torch.empty_like(q)]
        (q_rot,) = call("prep_q", q, torch.ones(D) if wq is None else wq.float())
        (k_rot,) = call("prep_k", k, torch.ones(D) if wk is None else wk.float())
        return call("attend", q_rot, k_rot, v)

    return Step("attention", [node], {"op": "attention", "q_norm": q_norm, "k_norm": k_norm, **a}, kernels, run)


def cross_entropy_step(node: Node, shapes: list) -> Step:
    V, ignore = shapes[0][-1], node.attrs["ignore_index"]

    def run(call, logits, targets):
        t = targets.reshape(-1)
        check_range(t[t != ignore], V, f"target (not ignore_index={ignore})", node)
        (mean,) = call("mean", *call("rows", logits.reshape(-1, V).float(), t))
        return [mean.reshape(())]

    return Step("cross_entropy", [node], {"op": "cross_entropy", "V": V, "ignore_index": ignore},
                lambda gpu: loss.cross_entropy(V, ignore, gpu), run)


def dense_step(node: Node, shapes: list) -> Step:
    in_shapes = [list(shape) for shape in shapes if shape is not None]

    def run(call, *args):
        if node.op == "embedding":
            check_range(args[0], args[1].shape[0], "ids", node)
        return call("main", *[a for a in args if a is not None])

    def kernels(gpu):
        return {"main": te_kernel(dense.BUILD[node.op](node.attrs, in_shapes), gpu)}

    return Step(node.op, [node], {"op": node.op, "in": in_shapes, **node.attrs}, kernels, run)


STEPS = {"dispatch": dispatch_step, "combine": combine_step, "attention": attention_step,
         "cross_entropy": cross_entropy_step}


def plan(graph, tile_for: Callable[[str, int, int, int, bool], tuple[CpuTile | GpuTile, str]],
         skip=frozenset()) -> list[Step]:
    """One step per node not in skip; a grouped_matmul feeding only a swiglu takes it as its epilogue.
    tile_for(op, E, N, K, swiglu) gives the GEMM's tile and where it came from."""
    types, epilogues = graph.types(), swiglu_epilogues(graph)
    done, steps = set(skip), []
    for node in graph.nodes:
        if node.name in done:
            continue
        shapes = [None if i is None else types[i].shape for i in node.inputs]
        if node.op == "grouped_matmul":
            nodes = [node, epilogues[node.name]] if node.name in epilogues else [node]
            done.update(n.name for n in nodes[1:])
            swi = len(nodes) > 1
            steps.append(gmm_step(node.op, nodes, *shapes[1], *tile_for(node.op, *shapes[1], swi), swi, False))
        elif node.op == "linear":
            steps.append(linear_step(node, *shapes[1], *tile_for("linear", 1, *shapes[1], False)))
        elif node.op == "router":
            steps.append(router_step(node, *shapes[1], tile_for("linear", 1, *shapes[1], False)[0]))
        else:
            steps.append(STEPS.get(node.op, dense_step)(node, shapes))
    return steps
