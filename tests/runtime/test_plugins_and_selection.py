"""Out-of-tree plug-ins are found through entry-point metadata, selected and run; selection explains
itself; a graph with ops the chosen backend lacks falls back per node."""

import sys
import textwrap

import pytest
import torch

import portable_moe
from portable_moe import registry
from portable_moe.ir.meanings import run_graph
from portable_moe.models import build_model, init_params, preset

PLUGIN = textwrap.dedent('''
    """A third-party backend: runs only the dense elementwise and linear ops, by torch."""
    from portable_moe.backends.base import Backend, Support
    from portable_moe.backends.reference import ReferenceExecutable
    from portable_moe.ir import DType

    class TinyBackend(Backend):
        name = "tiny"

        def availability(self, device):
            return None if device.kind == "cpu" else "tiny: CPU only"

        def support(self, device):
            ops = ("linear", "add", "mul", "silu", "rms_norm", "embedding")
            return Support({op: frozenset({DType.float32}) for op in ops}, {"router": "tiny has no MoE ops"})

        def compile(self, graph, device, options):
            self.require_supported(graph, device)
            exe = ReferenceExecutable(graph, device)
            exe.notes = ["compiled by the tiny plug-in"]
            return exe
''')


def install(tmp_path, monkeypatch, dist_name: str, entry_point: str):
    """An installed distribution (dist-info on sys.path) whose one backend entry point is `entry_point`."""
    dist = tmp_path / f"{dist_name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[portable_moe.backends]\n{entry_point}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()


@pytest.fixture
def tiny_plugin(tmp_path, monkeypatch):
    (tmp_path / "tiny_plugin.py").write_text(PLUGIN)
    install(tmp_path, monkeypatch, "tiny_plugin", "tiny = tiny_plugin:TinyBackend")
    yield
    sys.modules.pop("tiny_plugin", None)
    registry.refresh()


def debug_model():
    graph = build_model(preset("debug"))
    return graph, init_params(graph)


def test_plugin_is_found_selected_and_run_with_fallback(tiny_plugin):
    assert "tiny" in registry.backend_names()
    graph, params = debug_model()
    model = portable_moe.compile(graph, params, device="cpu", backend="tiny")
    ids = torch.randint(0, 256, (2, 5))
    want, = run_graph(graph, {"ids": ids}, params)
    torch.testing.assert_close(model(ids), want)
    placement = model.placement()
    assert placement["layers.0.moe.router"] != "tiny"          # tiny lacks router: it fell back
    assert placement["lm_head"] == "tiny"
    why = model.why()
    assert "tiny" in why and "tiny has no MoE ops" in why and "compiled by the tiny plug-in" in why


def test_environment_variable_selects_the_plugin(tiny_plugin, monkeypatch):
    monkeypatch.setenv("PORTABLE_MOE_BACKEND", "tiny")
    graph, params = debug_model()
    model = portable_moe.compile(graph, params, device="cpu")
    assert model.selection.winner == "tiny" and "PORTABLE_MOE_BACKEND" in model.selection.source


def test_explicit_argument_beats_environment(tiny_plugin, monkeypatch):
    monkeypatch.setenv("PORTABLE_MOE_BACKEND", "tiny")
    graph, params = debug_model()
    assert portable_moe.compile(graph, params, backend="reference").selection.winner == "reference"


def test_unknown_backend_lists_the_known_ones(monkeypatch):
    graph, params = debug_model()
    with pytest.raises(registry.RegistryError, match="unknown backend 'nonexistent'; known backends: .*reference"):
        portable_moe.compile(graph, params, backend="nonexistent")


def test_broken_plugin_is_listed_unavailable(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "broken", "broken = not_installed_dep:Backend")
    try:
        with pytest.raises(registry.BackendUnavailable, match="not_installed_dep"):
            registry.load("broken")
    finally:
        registry.refresh()


def test_gradients_through_a_non_differentiable_backend_match_the_reference(tiny_plugin):
    """The tiny plug-in's executables are not differentiable: the runtime's reference fallback gives grads."""
    from portable_moe.backends.reference import ReferenceExecutable
    ReferenceExecutable.differentiable = False
    try:
        graph = build_model(preset("debug"), with_loss=True)
        params = init_params(graph)
        ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(1))
        model = portable_moe.compile(graph, params, backend="tiny")
        model(ids, ids)[1].backward()
        leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
        run_graph(graph, {"ids": ids, "targets": ids}, leaves)[1].backward()
    finally:
        ReferenceExecutable.differentiable = True
    for name, p in model.named_graph_params().items():
        torch.testing.assert_close(p.grad, leaves[name].grad, rtol=1e-5, atol=1e-7)
