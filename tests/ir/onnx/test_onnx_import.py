"""Import: our files come back exactly (metadata, guarded by a digest of the nodes); a torch-exported
MoE loop is recognised as our MoE ops and checked numerically; plain dense graphs map op by op;
anything else is an error that lists the ONNX ops it cannot map."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx_helpers import arrays, graph_and_params

from portable_moe.backends.devices import cpu_device
from portable_moe.backends.onnxruntime import OnnxRuntimeBackend
from portable_moe.ir import MOE_OPS, IRError, to_json
from portable_moe.ir.meanings import run_graph
from portable_moe.ir.onnx import export, import_model


def torch_params(params: dict) -> dict:
    return {k: torch.from_numpy(np.array(v)) for k, v in params.items()}


@pytest.mark.parametrize("name", ["debug", "debug-deepseek"])
def test_round_trip_of_our_export_is_exact(name):
    graph, params = graph_and_params(name, layer=False)
    back, back_params = import_model(export(graph, arrays(params)))
    assert to_json(back) == to_json(graph)
    assert back_params.keys() == params.keys()
    for k, v in params.items():
        np.testing.assert_array_equal(back_params[k], v.numpy())
    ids = torch.randint(0, 256, (2, 5))
    want = run_graph(graph, {"ids": ids}, params)[0]
    got = run_graph(back, {"ids": ids}, torch_params(back_params))[0]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_edited_file_does_not_trust_the_metadata():
    graph, params = graph_and_params("debug", layer=True)
    model = export(graph, arrays(params))
    model.graph.node[0].name = "edited"
    with pytest.raises(IRError, match=r"unsupported ONNX op\(s\):.*TopK"):
        import_model(model)


def test_torch_exported_moe_is_recognised(torch_moe_file):
    module, path = torch_moe_file
    graph, params = import_model(path)
    assert MOE_OPS <= graph.ops()
    assert params["experts.gate_up"].shape == (4, 96, 32)
    x = torch.randn(29, 32)
    with torch.no_grad():
        want = module(x)
    got = run_graph(graph, {graph.inputs[0].name: x}, torch_params(params))[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    backend = OnnxRuntimeBackend()
    exe = backend.compile(graph, cpu_device(), backend.Options())
    torch.testing.assert_close(exe.run({graph.inputs[0].name: x}, torch_params(params))[0], want,
                               rtol=1e-5, atol=1e-6)


def test_pattern_that_computes_something_else_is_refused(torch_moe_file):
    _, path = torch_moe_file
    model = onnx.load(str(path))
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    softmax.op_type = "Sigmoid"                           # not a softmax router any more
    del softmax.attribute[:]
    with pytest.raises(IRError, match="unsupported ONNX op"):
        import_model(model)
    model = onnx.load(str(path))
    div = next(n for n in model.graph.node if n.op_type == "Div")
    div.op_type = "Mul"                                   # weights scaled, not renormalised
    with pytest.raises(IRError, match="does not compute the same"):
        import_model(model)


def dense_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=0),
             helper.make_node("Sigmoid", ["h"], ["s"]), helper.make_node("Mul", ["h", "s"], ["a"]),
             helper.make_node("MatMul", ["a", "w2"], ["y"]), helper.make_node("Softmax", ["y"], ["p"], axis=-1)]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 4])],
                              initializer=[numpy_helper.from_array(a, n) for a, n in
                                           ((w1, "w1"), (b1, "b1"), (w2, "w2"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_dense_ops_map_one_to_one():
    import onnxruntime as ort

    model = dense_model()
    graph, params = import_model(model)
    assert [n.op for n in graph.nodes] == ["linear", "sigmoid", "mul", "linear", "softmax"]
    x = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = run_graph(graph, {"x": torch.from_numpy(x)}, torch_params(params))[0]
    np.testing.assert_allclose(got.numpy(), want[0], rtol=1e-5, atol=1e-6)


def test_unsupported_ops_are_listed():
    model = dense_model()
    model.graph.node[1].op_type = "Relu"
    model.graph.node.append(helper.make_node("Erf", ["p"], ["q"]))
    model.graph.output[0].name = "q"
    with pytest.raises(IRError, match=r"unsupported ONNX op\(s\): Erf x1, Relu x1"):
        import_model(model)


def test_unreadable_file_is_an_ir_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(IRError, match="cannot read ONNX file"):
        import_model(bad)
