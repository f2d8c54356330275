"""What enters at run time: out-of-range ids refused the same way on every backend, names that never
become paths, environment knobs parsed strictly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import portable_moe
from portable_moe import knobs
from portable_moe.ir import DType, GraphBuilder, IRError, TensorType
from portable_moe.knobs import KnobError
from portable_moe.models import build_moe_layer, init_params, preset
from portable_moe.runtime.validate import Validator


def embedding_graph(vocab=16, hidden=8):
    b = GraphBuilder("ids-only")
    ids = b.input("ids", TensorType(DType.int64, ("tokens",)))
    w = b.param("emb", TensorType(DType.float32, (vocab, hidden)))
    y = b.op1("embedding", ids, w, name="embed")
    return b.finish(b.op1("silu", y, name="act"))


@pytest.mark.parametrize("backend", ["reference", "onnxruntime", "tvm"])
@pytest.mark.parametrize("bad", [-1, -16, 16, 2**40])
def test_out_of_range_ids_are_refused_alike_on_every_backend(backend, bad, tmp_path, monkeypatch):
    monkeypatch.setenv("PORTABLE_MOE_CACHE_DIR", str(tmp_path))
    graph = embedding_graph()
    params = {"emb": torch.randn(16, 8)}
    model = portable_moe.compile(graph, params, device="cpu", backend=backend)
    assert {v.split(":")[0] for v in model.placement().values()} == {backend}
    good = model(torch.tensor([0, 15, 3]))
    assert good.shape == (3, 8)
    with pytest.raises(IRError, match=rf"ids out of range \[0, 16\): input 'ids' holds {bad}$"):
        model(torch.tensor([1, bad, 2]))


def test_the_check_runs_for_direct_executable_calls_too():
    from portable_moe import registry
    from portable_moe.backends.devices import cpu_device

    backend = registry.load("onnxruntime")
    exe = backend.compile(embedding_graph(), cpu_device(), backend.Options())
    with pytest.raises(IRError, match="holds -1"):
        exe.run({"ids": torch.tensor([-1])}, {"emb": torch.randn(16, 8)})


def test_a_graph_name_never_escapes_the_reproducer_folder(tmp_path):
    graph = build_moe_layer(preset("debug"))
    graph.name = "../" * 12 + "tmp/ESCAPED"
    params = init_params(graph, 0)
    stem = Validator(1.0, False, tmp_path / "repro").save(graph, {"x": torch.zeros(1)} | params)
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert written and all((tmp_path / "repro") in p.parents for p in written)
    assert (tmp_path / "repro") in Path(stem).parents


@pytest.mark.parametrize("text,want", [("1", True), ("true", True), ("Yes", True), ("on", True), ("0", False),
                                       ("False", False), ("false", False), ("no", False), ("", False)])
def test_validate_raise_is_a_strict_boolean(monkeypatch, text, want):
    monkeypatch.setenv("PORTABLE_MOE_VALIDATE_RAISE", text)
    assert knobs.validate_raise() is want


@pytest.mark.parametrize("junk", ["2", "maybe", "Flase", "-1"])
def test_junk_in_a_boolean_knob_is_an_error(monkeypatch, junk):
    monkeypatch.setenv("PORTABLE_MOE_VALIDATE_RAISE", junk)
    with pytest.raises(KnobError, match="PORTABLE_MOE_VALIDATE_RAISE"):
        knobs.validate_raise()
