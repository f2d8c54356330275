"""Runs a graph with the Triton kernels (the run-time planning). In inference a MoE chain (ir.rewrites)
runs fused (launch.moe_ffn); when gradients are wanted every node runs through the autograd Functions of .autograd
(each op has a Triton backward), with the gate_up GEMM and its SwiGLU fused. Nothing here waits on the
device: index checks run only on values that come from outside the graph."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...ir import Graph, IRError, Node
from ...ir.rewrites import moe_chains, swiglu_epilogues
from ..base import Executable
from ..devices import Device
from . import autograd as fn
from . import launch
from .tuning import TuningCache, limits_for, variant


def check_offsets(offsets: torch.Tensor, rows: int, experts: int, node: Node):
    if offsets.device.type == "meta":
        return
    bounds = offsets.tolist()
    if len(bounds) != experts + 1 or bounds[0] != 0 or bounds[-1] != rows or any(
            a > b for a, b in zip(bounds, bounds[1:])):
        raise IRError(f"offsets {bounds[:8]}... are not a non-decreasing split of {rows} rows over {experts} "
                      "experts", node.name, node.op)


def check_indices(indices: torch.Tensor, experts: int, node: Node):
    if indices.numel() and indices.device.type != "meta" and (int(indices.min()) < 0 or int(indices.max()) >= experts):
        raise IRError(f"expert index out of range [0, {experts})", node.name, node.op)


class TritonExecutable(Executable):
    differentiable = True        # every op it runs has a Triton backward

    def __init__(self, graph: Graph, device: Device, cache: TuningCache):
        super().__init__(graph, device)
        self.cache, self.fused, self.chains = cache, swiglu_epilogues(graph), moe_chains(graph)
        self.outside = {v.name for v in graph.inputs} | {v.name for v in graph.params}
        self.limits = None if device.kind == "cpu" else limits_for(device.arch, device.torch_device)
        self.notes: list[str] = []

    def gemm_config(self, x: torch.Tensor, w: torch.Tensor, swiglu: bool, gather: bool = False, rows: int = 0):
        arch = "cpu" if x.device.type == "cpu" else self.device.arch
        E, N, K = w.shape
        cfg, note = self.cache.get(arch, variant(swiglu, gather), str(x.dtype).removeprefix("torch."), N, K,
                                   -(-(rows or x.shape[0]) // E), self.limits, x.element_size())
        if note and note not in self.notes:
            self.notes.append(note)
        return cfg

    def run_chain(self, chain, env: dict):
        x, idx = (env[i] for i in chain.dispatch.inputs[:2])
        gate_up, down, weights = env[chain.gate_up.inputs[1]], env[chain.down.inputs[1]], env[chain.combine.inputs[2]]
        if chain.dispatch.inputs[1] in self.outside:
            check_indices(idx, chain.dispatch.attrs["num_experts"], chain.dispatch)
        rows = idx.numel()
        cfg_gu = self.gemm_config(x, gate_up, True, True, rows)
        cfg_d = self.gemm_config(x, down, False, rows=rows)
        env[chain.combine.outputs[0].name] = launch.moe_ffn(x, idx, weights, gate_up, down, cfg_gu, cfg_d)

    def run_node(self, node: Node, args: list, env: dict):
        a = node.attrs
        if node.op == "router":
            return fn.RouterFn.apply(*args, a)
        if node.op == "dispatch":
            if node.inputs[1] in self.outside:
                check_indices(args[1], a["num_experts"], node)
            return fn.DispatchFn.apply(*args, a["num_experts"])
        if node.op == "grouped_matmul":
            x, w, offsets = args
            if node.inputs[2] in self.outside:
                check_offsets(offsets, x.shape[0], w.shape[0], node)
            swiglu = self.fused.get(node.name)
            y = fn.GroupedMatmulFn.apply(x, w, offsets, self.gemm_config(x, w, swiglu is not None), swiglu is not None)
            if swiglu is not None:
                env[swiglu.outputs[0].name] = y
            return y
        if node.op == "swiglu":
            return fn.SwigluFn.apply(*args)
        if node.op == "combine":
            return fn.CombineFn.apply(*args)
        raise IRError("the Triton backend has no kernel for this op", node.name, node.op)

    def run(self, inputs: Mapping, params: Mapping) -> list:
        env = {**inputs, **params}
        grads = torch.is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in env.values())
        self.execute(env, grads)
        return [env[o] for o in self.graph.outputs]

    def execute(self, env: dict, grads: bool, only: frozenset[str] | None = None):
        """Runs the nodes (those in `only`, when given) in order; each node's outputs go into env."""
        done = set()
        for node in self.graph.nodes:
            if node.name in done or (only is not None and node.op not in only):
                continue
            chain = None if grads else self.chains.get(node.name)
            if chain is not None:
                launch.attribute([n.name for n in chain.nodes])
                self.run_chain(chain, env)
                done |= {n.name for n in chain.nodes}
                continue
            launch.attribute([node.name])
            if node.name in self.fused:
                done.add(self.fused[node.name].name)
            result = self.run_node(node, [None if i is None else env[i] for i in node.inputs], env)
            if node.name not in self.fused:
                results = result if isinstance(result, tuple) else (result,)
                env.update((v.name, r) for v, r in zip(node.outputs, results))
