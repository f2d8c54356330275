"""Export: every preset that fits here passes onnx.checker (full check); onnxruntime agrees with the
float64 reference; ties and the dispatch order are exactly the reference's."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx_helpers import PRESETS_HERE, arrays, graph_and_params

from portable_moe.ir import DType, GraphBuilder, IRError, TensorType
from portable_moe.ir.meanings import run_graph
from portable_moe.ir.onnx import OPSET, check, export, save


def run_ort(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v.numpy() for k, v in feed.items()})


def reference(graph, feed, params):
    return run_graph(graph, {k: v.double() if v.is_floating_point() else v for k, v in feed.items()},
                     {k: v.double() for k, v in params.items()})


@pytest.mark.parametrize("name", PRESETS_HERE)
@pytest.mark.parametrize("layer", [True, False])
def test_presets_pass_the_checker_and_match_the_reference(name, layer):
    graph, params = graph_and_params(name, layer, with_loss=not layer)
    model = export(graph, arrays(params))
    check(model)
    assert model.opset_import[0].version == OPSET
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    assert inferred.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    first_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert first_dim.dim_param in ("tokens", "batch")          # the token count stays dynamic
    cfg_h = graph.inputs[0].type.shape[-1]
    for tokens in (1, 9):
        g = torch.Generator().manual_seed(tokens)
        if layer:
            feed = {"x": torch.randn(tokens, cfg_h, generator=g)}
        else:
            feed = {"ids": torch.randint(0, 256, (2, tokens), generator=g),
                    "targets": torch.randint(0, 256, (2, tokens), generator=g)}
        for got, want in zip(run_ort(model, feed), reference(graph, feed, params), strict=True):
            assert got.shape == tuple(want.shape)
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=2e-6)


def test_float16_layer_matches_within_half_precision():
    graph, params = graph_and_params("debug-deepseek", layer=True, dtype="float16")
    model = export(graph, arrays(params))
    check(model)
    x = torch.randn(11, 64).half()
    got = run_ort(model, {"x": x})[0]
    want = reference(graph, {"x": x}, params)[0].numpy()
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-2, atol=1e-4)


def router_dispatch_graph(experts=8, top_k=2, hidden=4):
    b = GraphBuilder("route")
    x = b.input("x", TensorType(DType.float32, ("tokens", hidden)))
    w = b.param("w", TensorType(DType.float32, (experts, hidden)))
    _, idx, _ = b.op("router", x, w, None, None, name="router", top_k=top_k)
    rows, offsets, order = b.op("dispatch", x, idx, name="dispatch", num_experts=experts)
    return b.finish(idx, rows, offsets, order)


def test_ties_go_to_the_lower_index_and_dispatch_is_stable():
    graph = router_dispatch_graph()
    params = {"w": torch.zeros(8, 4)}                     # every score equal: all ties
    feed = {"x": torch.randn(6, 4)}
    got = run_ort(export(graph, arrays(params)), feed)
    want = reference(graph, feed, params)
    np.testing.assert_array_equal(got[0], np.tile([0, 1], (6, 1)))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w.numpy().astype(g.dtype))
    np.testing.assert_array_equal(got[3], np.r_[np.arange(0, 12, 2), np.arange(1, 12, 2)])  # stable by p


def test_random_routing_equals_the_reference_exactly():
    graph = router_dispatch_graph(experts=16, top_k=4, hidden=8)
    params = {"w": torch.randn(16, 8)}
    feed = {"x": torch.randn(257, 8)}
    got = run_ort(export(graph, arrays(params)), feed)
    want = reference(graph, feed, params)
    for i in (0, 2, 3):                                   # indices, offsets, order
        np.testing.assert_array_equal(got[i], want[i].numpy())


def test_zero_tokens():
    graph, params = graph_and_params("debug", layer=True)
    out = run_ort(export(graph, arrays(params)), {"x": torch.zeros(0, 64)})[0]
    assert out.shape == (0, 64)


def test_bad_params_are_named():
    graph, params = graph_and_params("debug", layer=True)
    with pytest.raises(IRError, match="'router.weight' is missing"):
        export(graph, {k: v for k, v in arrays(params).items() if k != "router.weight"})
    bad = arrays(params) | {"experts.down": np.zeros((2, 2), np.float32)}
    with pytest.raises(IRError, match="'experts.down' has shape"):
        export(graph, bad)


def test_external_data_round_trip(tmp_path):
    graph, params = graph_and_params("debug", layer=True)
    path = save(export(graph, arrays(params)), tmp_path / "m.onnx", external_data=True)
    assert (tmp_path / "m.onnx.data").stat().st_size > path.stat().st_size
    check(path)
    loaded = onnx.load(str(path))
    feed = {"x": torch.randn(5, 64)}
    np.testing.assert_allclose(run_ort(loaded, feed)[0], reference(graph, feed, params)[0].numpy(), atol=1e-6)


def test_unfused_export_is_equal():
    graph, params = graph_and_params("debug", layer=True)
    feed = {"x": torch.randn(33, 64)}
    fused = run_ort(export(graph, arrays(params)), feed)[0]
    plain = run_ort(export(graph, arrays(params), fuse=False), feed)[0]
    np.testing.assert_allclose(fused, plain, rtol=1e-6, atol=1e-7)


def test_ir_onnx_does_not_import_torch():
    import ast
    from pathlib import Path

    import portable_moe.ir.onnx as package

    for path in Path(package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "torch" for n in names), f"{path.name} imports torch"
