"""Shadow validation (portable_moe.runtime.validate) catches a faulty backend on live calls: it names
the node and saves a reproducer (graph JSON + safetensors inputs) that shows the disagreement again."""

import warnings
from pathlib import Path

import pytest
import torch
from faulty_backends import FaultyBackend, faulty_backends
from safetensors.torch import load_file

import portable_moe
from portable_moe import registry
from portable_moe.ir import from_json
from portable_moe.ir.meanings import run_graph
from portable_moe.models import build_moe_layer, init_params, preset


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Reproducers go to a per-test cache, never the user's."""
    monkeypatch.setenv("PORTABLE_MOE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def drops_expert(monkeypatch):
    """Makes the faulty backend loadable by name, as if registered through an entry point."""
    backend = next(b for b in faulty_backends() if b.name == "faulty-drops-expert")
    real = registry.load
    monkeypatch.setattr(registry, "load", lambda name: backend if name == backend.name else real(name))
    return backend


def layer():
    cfg = preset("debug")
    graph = build_moe_layer(cfg)
    params = init_params(graph, seed=3, std=cfg.hidden ** -0.5)
    x = torch.randn(24, cfg.hidden, generator=torch.Generator().manual_seed(4))
    return graph, params, x


def test_shadow_validation_reports_the_node_and_saves_a_reproducer(drops_expert, tmp_path):
    graph, params, x = layer()
    model = portable_moe.compile(graph, params, device="cpu", backend=drops_expert.name, validate=1.0)
    assert model.placement() and set(model.placement().values()) == {drops_expert.name}
    with pytest.warns(UserWarning, match=r"shadow validation: node '\w+' on faulty-drops-expert"):
        model(x)
    finding = model.validator.findings[0]
    assert finding.backend == drops_expert.name and finding.worst > 1
    assert finding.node in {n.name for n in graph.nodes}
    stem = Path(finding.reproducer)
    assert stem.is_relative_to(tmp_path)
    repro_graph = from_json(Path(f"{stem}.json").read_text())
    tensors = load_file(f"{stem}.safetensors")
    inputs = {v.name: tensors[v.name] for v in repro_graph.inputs}
    params_r = {v.name: tensors[v.name] for v in repro_graph.params}
    want = run_graph(repro_graph, inputs, params_r)[0]
    got = drops_expert.compile(repro_graph, model.device, drops_expert.Options()).run(inputs, params_r)[0]
    assert not torch.allclose(got, want, rtol=1e-3, atol=1e-4)


def test_shadow_validation_is_quiet_on_a_correct_backend(monkeypatch):
    faithful = FaultyBackend("faithful", {}, ("", ""))     # the reference under another name: nothing broken
    real = registry.load
    monkeypatch.setattr(registry, "load", lambda name: faithful if name == "faithful" else real(name))
    graph, params, x = layer()
    model = portable_moe.compile(graph, params, device="cpu", backend="faithful", validate=1.0)
    assert model.validator.fraction == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)
    assert model.validator.checked == 1 and model.validator.findings == []
