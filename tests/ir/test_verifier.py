"""The verifier rejects each kind of malformed graph with an IRError naming node, op and problem."""

import copy
import json

import pytest

from portable_moe.ir import DType, GraphBuilder, IRError, TensorType, from_dict, from_json, to_dict, to_json, verify
from portable_moe.models import PRESETS, build_model, build_moe_layer, preset


def layer_dict():
    return to_dict(build_moe_layer(preset("debug")))


def node(d, name):
    return next(n for n in d["nodes"] if n["name"] == name)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip_is_exact_for_every_preset(name):
    graph = build_model(preset(name), with_loss=True)
    text = to_json(graph)
    again = from_json(text)
    assert to_json(again) == text
    assert again == graph


def mutate(path_fn):
    d = layer_dict()
    path_fn(d)
    return d


CASES = [
    ("unknown op", lambda d: node(d, "swiglu").update(op="swishglu"), "swiglu", "unknown op 'swishglu'"),
    ("wrong arity", lambda d: node(d, "swiglu")["inputs"].append("x"), "swiglu", "inputs"),
    ("dangling value", lambda d: node(d, "down")["inputs"].__setitem__(0, "nowhere"), "down", "dangling"),
    ("dtype mismatch", lambda d: d["params"][1].update(dtype="float16"), "gate_up", "dtype"),
    ("shape mismatch", lambda d: d["params"][2].update(shape=[8, 64, 31]), "down", "feature dim"),
    ("top_k > experts", lambda d: node(d, "router")["attrs"].update(top_k=9), "router", "top_k=9 > 8 experts"),
    ("groups", lambda d: node(d, "router")["attrs"].update(num_groups=3), "router", "does not divide"),
    ("bad attr type", lambda d: node(d, "router")["attrs"].update(top_k="2"), "router", "must be int"),
    ("unknown attr", lambda d: node(d, "router")["attrs"].update(temperature=1.0), "router", "unknown attribute"),
    ("missing required input", lambda d: node(d, "combine")["inputs"].__setitem__(1, None), "combine", "missing"),
    ("declared type wrong", lambda d: node(d, "swiglu")["outputs"][0].update(shape=["2*tokens", 33]), "swiglu",
     "declared"),
]


@pytest.mark.parametrize("label,mutation,culprit,words", CASES, ids=[c[0] for c in CASES])
def test_verifier_names_the_culprit(label, mutation, culprit, words):
    with pytest.raises(IRError) as e:
        from_dict(mutate(mutation))
    assert culprit in str(e.value) and words in str(e.value)
    assert e.value.node == culprit


def test_cycle_is_named():
    d = layer_dict()
    node(d, "gate_up")["inputs"][0] = "down"      # gate_up <- down <- swiglu <- gate_up
    with pytest.raises(IRError, match="cycle through nodes"):
        from_dict(d)


def test_use_before_definition_without_cycle():
    d = layer_dict()
    d["nodes"] = d["nodes"][1:] + d["nodes"][:1]
    with pytest.raises(IRError, match="used before"):
        from_dict(d)


@pytest.mark.parametrize("text,words", [
    ("{", "not valid JSON"),
    ("[]", "expected dict"),
    (json.dumps({**layer_dict(), "version": 99}), "version 99"),
    (json.dumps({**layer_dict(), "extra": 1}), "unknown field"),
])
def test_malformed_files(text, words):
    with pytest.raises(IRError, match=words):
        from_json(text)


def test_fp8_dtypes_are_distinct():
    assert DType.float8_e4m3fn != DType.float8_e4m3fnuz
    b = GraphBuilder("fp8")
    x = b.input("x", TensorType(DType.float8_e4m3fnuz, ("tokens", 4)))
    verify(b.finish(b.op1("silu", x)))


def test_broadcasting_rule():
    b = GraphBuilder("bc")
    a = b.input("a", TensorType(DType.float32, ("t", 8)))
    g = b.input("g", TensorType(DType.float32, ("t", 1)))
    assert b.type_of(b.op1("mul", a, g)).shape == ("t", 8)
    bad = b.input("bad", TensorType(DType.float32, ("t", 3)))
    with pytest.raises(IRError, match="do not broadcast"):
        b.op1("add", a, bad)


def test_duplicate_names():
    d = layer_dict()
    d["nodes"][1]["name"] = d["nodes"][0]["name"]
    with pytest.raises(IRError, match="used twice"):
        from_dict(copy.deepcopy(d))
