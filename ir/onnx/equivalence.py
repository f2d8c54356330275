"""Checks that an imported graph computes what the original ONNX model computes, by running both
through onnxruntime on the same random inputs (the importer's guard on pattern matches)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from ..graph import Graph
from .builder import IR_DTYPES
from .export import export

NP_OF = {"float64": np.float64, "float32": np.float32, "float16": np.float16}


def random_feed(model: onnx.ModelProto, size: int, rng) -> dict | None:
    weights = {t.name for t in model.graph.initializer}
    feed = {}
    for inp in model.graph.input:
        if inp.name in weights:
            continue
        t = inp.type.tensor_type
        dtype = IR_DTYPES.get(t.elem_type)
        if dtype is None or dtype.value not in NP_OF:
            return None
        shape = [d.dim_value if d.HasField("dim_value") else size for d in t.shape.dim]
        feed[inp.name] = rng.standard_normal(shape).astype(NP_OF[dtype.value])
    return feed


def mismatch(original: onnx.ModelProto, graph: Graph, params: Mapping, tokens: int = 23,
             rtol: float = 1e-4, atol: float = 1e-5) -> str | None:
    """None when both agree (or the check cannot run: no onnxruntime, non-float inputs); else why not."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    feed = random_feed(original, tokens, np.random.default_rng(0))
    if feed is None:
        return None
    providers = ["CPUExecutionProvider"]
    want = ort.InferenceSession(original.SerializeToString(), providers=providers).run(None, feed)
    ours = export(graph, params, keep_ir=False)
    got = ort.InferenceSession(ours.SerializeToString(), providers=providers).run(
        None, {v.name: feed[v.name] for v in graph.inputs})
    for name, a, b in zip(graph.outputs, want, got, strict=True):
        if a.shape != b.shape:
            return f"output '{name}': shape {list(b.shape)} instead of {list(a.shape)}"
        if not np.allclose(a, b, rtol=rtol, atol=atol):
            return f"output '{name}': max difference {float(np.abs(a - b).max()):.3g}"
    return None
