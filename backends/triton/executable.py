"""Runs a graph with the Triton kernels: a MoE chain fused in inference, each node through its autograd Function
when gradients are wanted. Offsets are checked (a host sync) only when they come from outside the graph."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...ir import Graph, Node
from ...ir.meanings import check_offsets
from ...ir.rewrites import moe_chains, swiglu_epilogues
from ..base import Executable
from ..devices import Device
from . import OPS, TritonOptions, launch
from . import autograd as fn
from .tuning import TuningCache, limits_for


class TritonExecutable(Executable):
    differentiable = True        # every op it runs has a Triton backward

    def __init__(self, graph: Graph, device: Device, options: TritonOptions):
        super().__init__(graph, device)
        self.cache = TuningCache(options.cache_root("triton"))
        self.fused, self.chains = swiglu_epilogues(graph), moe_chains(graph)
        self.outside = {v.name for v in (*graph.inputs, *graph.params)}
        self.limits = None if device.kind == "cpu" else limits_for(device.arch, device.torch_device)
        self.notes: list[str] = []

    def gemm_config(self, x: torch.Tensor, w: torch.Tensor, variant: str, rows: int):
        arch = "cpu" if x.device.type == "cpu" else self.device.arch
        E, N, K = w.shape
        cfg, note = self.cache.get(arch, variant, str(x.dtype).removeprefix("torch."), N, K, -(-rows // E),
                                   self.limits, x.element_size())
        if note and note not in self.notes:
            self.notes.append(note)
        return cfg

    def run_chain(self, chain, env: dict):
        x, idx = (env[i] for i in chain.dispatch.inputs[:2])
        gate_up, down, weights = env[chain.gate_up.inputs[1]], env[chain.down.inputs[1]], env[chain.combine.inputs[2]]
        rows = idx.numel()
        cfgs = self.gemm_config(x, gate_up, "swiglu+gather", rows), self.gemm_config(x, down, "plain", rows)
        env[chain.combine.outputs[0].name] = launch.moe_ffn(x, idx, weights, gate_up, down, *cfgs)

    def run_node(self, node: Node, env: dict):
        args = [None if i is None else env[i] for i in node.inputs]
        if node.op == "router":
            out = fn.RouterFn.apply(*args, node.attrs)
        elif node.op == "dispatch":
            out = fn.DispatchFn.apply(*args, node.attrs["num_experts"])
        elif node.op == "grouped_matmul":
            x, w, offsets = args
            if node.inputs[2] in self.outside and offsets.device.type != "meta":
                check_offsets(offsets.tolist(), x.shape[0], w.shape[0], node.name)
            act = self.fused.get(node.name)
            cfg = self.gemm_config(x, w, "swiglu" if act else "plain", x.shape[0])
            out = fn.GroupedMatmulFn.apply(x, w, offsets, cfg, act is not None)
            node = act or node             # a fused SwiGLU's output is what the kernel computed
        else:
            out = (fn.SwigluFn if node.op == "swiglu" else fn.CombineFn).apply(*args)
        env.update(zip((v.name for v in node.outputs), out if isinstance(out, tuple) else (out,)))

    def run(self, inputs: Mapping, params: Mapping) -> list:
        env = {**inputs, **params}
        self.execute(env, torch.is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in env.values()))
        return [env[o] for o in self.graph.outputs]

    def execute(self, env: dict, grads: bool):
        """Runs the MoE nodes into env (dense ones are skipped: lowering runs whole models on meta tensors)."""
        done = set()
        for node in self.graph.nodes:
            if node.op not in OPS or node.name in done:
                continue
            chain = None if grads else self.chains.get(node.name)
            nodes = chain.nodes if chain else [node, *filter(None, [self.fused.get(node.name)])]
            done |= {n.name for n in nodes}
            if launch.recorder:
                launch.recorder.nodes = [n.name for n in nodes]
            if chain:
                self.run_chain(chain, env)
            else:
                self.run_node(node, env)
