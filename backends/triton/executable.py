"""Runs a graph with the Triton kernels. Fusion (a rewrite, same semantics): a grouped_matmul whose only
consumer is a swiglu becomes one grouped GEMM with the SwiGLU epilogue.

Differentiable when every node has a backward path (BACKWARD_OPS; all the ops this backend runs have
one): run() calls the autograd Functions of .autograd, so torch autograd records the graph and the
runtime backpropagates through the Triton backward kernels instead of re-running the reference."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...ir import Graph, IRError, Node
from ...ir.rewrites import swiglu_epilogues
from ..base import Executable
from ..devices import Device
from . import autograd as fn
from .tuning import TuningCache


def check_offsets(offsets: torch.Tensor, rows: int, experts: int, node: Node):
    bounds = offsets.tolist()
    if len(bounds) != experts + 1 or bounds[0] != 0 or bounds[-1] != rows or any(
            a > b for a, b in zip(bounds, bounds[1:])):
        raise IRError(f"offsets {bounds[:8]}... are not a non-decreasing split of {rows} rows over {experts} "
                      "experts", node.name, node.op)


def check_indices(indices: torch.Tensor, experts: int, node: Node):
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= experts):
        raise IRError(f"expert index out of range [0, {experts})", node.name, node.op)


BACKWARD_OPS = frozenset({"router", "dispatch", "grouped_matmul", "swiglu", "combine"})


class TritonExecutable(Executable):
    def __init__(self, graph: Graph, device: Device, cache: TuningCache):
        super().__init__(graph, device)
        self.differentiable = all(node.op in BACKWARD_OPS for node in graph.nodes)
        self.cache = cache
        self.fused = swiglu_epilogues(graph)
        self.notes: list[str] = []

    def gemm_config(self, x: torch.Tensor, w: torch.Tensor):
        arch = "cpu" if x.device.type == "cpu" else self.device.arch
        cfg, note = self.cache.get(arch, str(x.dtype).removeprefix("torch."), w.shape[1], w.shape[2], x.shape[0])
        if note and note not in self.notes:
            self.notes.append(note)
        return cfg

    def run_node(self, node: Node, args: list, env: dict):
        a = node.attrs
        if node.op == "router":
            return fn.RouterFn.apply(*args, a)
        if node.op == "dispatch":
            check_indices(args[1], a["num_experts"], node)
            return fn.DispatchFn.apply(*args, a["num_experts"])
        if node.op == "grouped_matmul":
            x, w, offsets = args
            check_offsets(offsets, x.shape[0], w.shape[0], node)
            swiglu = self.fused.get(node.name)
            y = fn.GroupedMatmulFn.apply(x, w, offsets, self.gemm_config(x, w), swiglu is not None)
            if swiglu is not None:
                env[swiglu.outputs[0].name] = y
            return y
        if node.op == "swiglu":
            return fn.SwigluFn.apply(*args)
        if node.op == "combine":
            return fn.CombineFn.apply(*args)
        raise IRError("the Triton backend has no kernel for this op", node.name, node.op)

    def run(self, inputs: Mapping, params: Mapping) -> list:
        env = dict(inputs)
        env.update(params)
        done = set()
        for node in self.graph.nodes:
            if node.name in done:
                continue
            if node.name in self.fused:
                done.add(self.fused[node.name].name)
            args = [None if i is None else env[i] for i in node.inputs]
            result = self.run_node(node, args, env)
            results = result if isinstance(result, tuple) else (result,)
            if node.name not in self.fused:
                env.update((v.name, r) for v, r in zip(node.outputs, results))
        return [env[o] for o in self.graph.outputs]
