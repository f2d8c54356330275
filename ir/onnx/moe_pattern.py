"""Recognises a Mixtral-style MoE layer in an ONNX graph (as torch.onnx.export writes a loop over
experts): router Gemm -> Softmax -> TopK (-> ReduceSum/Div renormalise), then per expert
Equal(indices, e) ... gate/up Gemms, x*sigmoid(x), down Gemm ... ScatterND(add) into zeros.
The match is structural; the importer then checks it numerically against the original model.

Shapes: T tokens, H hidden, E experts, K top-k, F expert width."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .onnx_graph import OnnxView, attrs

PLUMBING = frozenset({
    "Gemm", "MatMul", "Softmax", "TopK", "ReduceSum", "Div", "Shape", "Expand", "ConstantOfShape", "Equal",
    "NonZero", "Transpose", "Slice", "Squeeze", "Unsqueeze", "GatherND", "Gather", "GatherElements", "Sigmoid",
    "Mul", "Concat", "ScatterND", "ScatterElements", "Cast", "Reshape", "Where", "Add", "Identity", "Constant",
    "Range", "Flatten",
})


@dataclass
class MoEMatch:
    x: str                      # the layer input [T, H]
    output: str                 # the value the layer produces [T, H]
    router_weight: np.ndarray   # [E, H]
    router_name: str
    top_k: int
    normalize: bool
    gate_EFH: np.ndarray
    up_EFH: np.ndarray
    down_EHF: np.ndarray
    nodes: set[str] = field(default_factory=set)    # names of the ONNX nodes the match replaces
    first: str = ""                                 # the node at whose place the IR ops go


def weight_of(view: OnnxView, node: onnx.NodeProto) -> np.ndarray | None:
    """W as [out, in] for Gemm(x, W, transB=1) / Gemm(x, W^T) / MatMul(x, W^T) with constant W."""
    if len(node.input) < 2 or (w := view.const(node.input[1])) is None or w.ndim != 2:
        return None
    a = attrs(node)
    if node.op_type == "Gemm":
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or len(node.input) > 2:
            return None
        return w if a.get("transB", 0) else w.T
    return w.T if node.op_type == "MatMul" else None


def router_of(view: OnnxView, topk: onnx.NodeProto):
    softmax = view.made_by(topk.input[0], "Softmax")
    if softmax is None or attrs(softmax).get("axis", -1) not in (-1, 1):
        return None
    gemm = view.producer.get(softmax.input[0])
    if gemm is None or (w := weight_of(view, gemm)) is None:
        return None
    return gemm, softmax, w


def renormalised(view: OnnxView, values: str) -> str | None:
    for s in view.users(values, "ReduceSum"):
        for d in view.users(s.output[0], "Div"):
            if list(d.input) == [values, s.output[0]]:
                return d.output[0]
    return None


def chain_length(view: OnnxView, end: onnx.NodeProto) -> int:
    n, node = 0, end
    while node is not None and node.op_type == "ScatterND" and attrs(node).get("reduction") in ("add", b"add"):
        n, node = n + 1, view.producer.get(node.input[0])
    return n


def expert_gemms(view: OnnxView, region: list[onnx.NodeProto], indices: str, experts: int):
    """Per expert e: (gate [F,H], up [F,H], down [H,F]) found through the silu(gate)*up -> down shape."""
    found = {}
    for mul in (n for n in region if n.op_type == "Mul"):
        sig = view.made_by(mul.input[1], "Sigmoid")
        if sig is None or sig.input[0] != mul.input[0]:
            continue
        gate = view.producer.get(mul.input[0])
        glu = [m for m in view.users(mul.output[0], "Mul")]
        if gate is None or len(glu) != 1:
            continue
        up = view.producer.get(next(i for i in glu[0].input if i != mul.output[0]))
        downs = [d for d in view.consumers.get(glu[0].output[0], []) if d.op_type in ("Gemm", "MatMul")]
        if up is None or len(downs) != 1 or up.input[0] != gate.input[0]:
            continue
        ws = [weight_of(view, n) for n in (gate, up, downs[0])]
        e = expert_index(view, gate.input[0], indices)
        if any(w is None for w in ws) or e is None or e in found:
            return None
        found[e] = ws
    if sorted(found) != list(range(experts)):
        return None
    return [found[e] for e in range(experts)]


def expert_index(view: OnnxView, rows: str, indices: str) -> int | None:
    """The e of the Equal(indices, e) that selects the rows an expert reads."""
    for node in view.upstream([rows], stop={indices}):
        if node.op_type == "Equal" and node.input[0] == indices:
            e = view.const(node.input[1])
            if e is not None and e.size == 1:
                return int(e.reshape(()))
    return None


def match_at(view: OnnxView, topk: onnx.NodeProto) -> MoEMatch | None:
    found = router_of(view, topk)
    k = view.const(topk.input[1])
    a = attrs(topk)
    if found is None or k is None or a.get("largest", 1) != 1 or a.get("axis", -1) not in (-1, 1):
        return None
    gemm, _, w_router = found
    x = gemm.input[0]
    experts = w_router.shape[0]
    ends = [n for n in view.nodes if n.op_type == "ScatterND" and not view.users(n.output[0], "ScatterND")
            and chain_length(view, n) == experts]
    for end in ends:
        region = view.upstream([end.output[0]], stop={x})
        names = {n.name for n in region}
        if gemm.name in names and topk.name in names:
            break
    else:
        return None
    output = end.output[0]
    if any(n.op_type not in PLUMBING for n in region):
        return None
    inner = {o for n in region for o in n.output} - {output}
    if any(c.name not in names for v in inner for c in view.consumers.get(v, [])) or inner & view.outputs:
        return None
    per_expert = expert_gemms(view, region, topk.output[1], experts)
    if per_expert is None:
        return None
    gate, up, down = (np.stack([ws[j] for ws in per_expert]) for j in range(3))
    return MoEMatch(x=x, output=output, router_weight=w_router, router_name=gemm.input[1],
                    top_k=int(k.reshape(-1)[0]), normalize=renormalised(view, topk.output[0]) is not None,
                    gate_EFH=gate, up_EFH=up, down_EHF=down, nodes=names, first=region[0].name)


def find_moe(view: OnnxView) -> tuple[list[MoEMatch], list[str]]:
    """Every MoE layer matched, and a note for each TopK that looked like a router but did not match."""
    matches, notes = [], []
    for topk in (n for n in view.nodes if n.op_type == "TopK"):
        m = match_at(view, topk)
        if m is not None:
            matches.append(m)
        elif router_of(view, topk) is not None:
            notes.append(f"TopK '{topk.name}' follows a router but the expert loop around it was not recognised")
    return matches, notes
