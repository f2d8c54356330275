"""No vacuous verdicts: a sample whose comparison covers nothing is drawn again, and a case that never
compares anything is inconclusive, which fails the run and shows in every report."""

import json
import xml.etree.ElementTree as ET

import torch
from faulty_backends import faulty_backends

from portable_moe.backends.reference import ReferenceBackend
from portable_moe.conformance import runner
from portable_moe.conformance.execute import DRAWS
from portable_moe.conformance.report import write_html, write_json, write_junit
from portable_moe.conformance.runner import run_suite
from portable_moe.conformance.sample import OpCase, Sample, case_seed, exact, randn, rng
from portable_moe.ir import DType
from portable_moe.models import build_moe_layer, init_params, preset


def near_tie_layer(always: bool):
    """A debug MoE layer whose router scores experts 2i and 2i+1 a hair apart (1e-7 relative) for every
    token: each token's choice is ambiguous in float32, so every token is excluded from the comparison.
    With always=False only draws from the suite's first base seed are built that way."""
    def generate(dtype: DType, sc, seed: int) -> list[Sample]:
        cfg = preset("debug").with_(dtype=dtype.value)
        graph = build_moe_layer(cfg)
        s = case_seed(seed, "layer:near-ties", 0)
        tensors = {k: exact(v.double(), dtype) for k, v in init_params(graph, s, std=cfg.hidden ** -0.5).items()}
        if always or seed == 0:
            w = tensors["router.weight"]
            w[1::2] = w[0::2] * (1 + 1e-7)
        tensors["x"] = exact(randn(rng(s), 16, cfg.hidden), dtype)
        return [Sample("layer:near-ties", "tokens=16", dtype, s, graph, tensors, kind="layer")]
    return OpCase("layer:near-ties", generate)


def run_with(monkeypatch, case: OpCase, backend):
    monkeypatch.setattr(runner, "CASES", {case.op: case})
    return run_suite(backend, "cpu", ["float32"], progress=False, record=False)


def test_a_backend_whose_routing_is_ambiguous_on_every_token_is_inconclusive(monkeypatch, tmp_path):
    ties = next(b for b in faulty_backends() if b.name == "faulty-ties")    # picks the other expert of a tie
    report = run_with(monkeypatch, near_tie_layer(always=True), ties)
    r, = report.results
    assert r.excluded_tokens == 16 and r.compared == 0
    assert r.status == "inconclusive" and r.draws == DRAWS
    assert "excluded as routing-ambiguous" in r.reason
    assert not report.passed and not report.failures()
    assert any(line.startswith("INCONCLUSIVE faulty-ties") for line in report.failure_lines())
    assert "1 inconclusive" in report.summary_lines()[-1] and report.summary_lines()[-1].startswith("FAILED")

    write_json(report, tmp_path / "r.json")
    case = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert case["status"] == "inconclusive" and case["compared"] == 0 and case["excluded_tokens"] == 16
    write_junit(report, tmp_path / "r.xml")
    error = ET.parse(tmp_path / "r.xml").getroot().find(".//testcase/error")
    assert error is not None and error.get("type") == "inconclusive"
    write_html(report, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "1 inconclusive" in html and "Inconclusive (compared nothing" in html and "FAILED" in html


def test_a_sample_that_compared_nothing_is_drawn_again(monkeypatch):
    ties = next(b for b in faulty_backends() if b.name == "faulty-ties")
    report = run_with(monkeypatch, near_tie_layer(always=False), ties)
    r, = report.results
    assert r.draws == 2 and r.compared > 0 and r.excluded_tokens < 16
    assert any("compared nothing before" in n for n in r.notes)
    assert r.status == "passed"       # its tie rule only matters on exact ties, which this draw has none of


def test_zero_token_samples_are_empty_on_purpose_not_inconclusive():
    report = run_suite("reference", "cpu", ["float32"], ops=["silu"], case="edge:zero-tokens", progress=False,
                       record=False)
    r, = report.results
    assert report.passed and r.compared == 0 and r.draws == 1


def test_model_cases_compare_something_in_every_dtype_and_tier():
    """The whole-model samples (in bfloat16 most tokens' routing is ambiguous; `slow` stands for Triton's
    CPU interpreter) compare output elements in every dtype and tier, with at most a few redraws."""
    slow = ReferenceBackend()
    slow.conformance_scale = {"cpu": "tiny"}
    for tier, backend in (("quick", "reference"), ("full", "reference"), ("full", slow)):
        report = run_suite(backend, "cpu", ["float32", "float16", "bfloat16"], tier=tier, ops=["model:*"],
                           progress=False, record=False)
        assert report.passed and len(report.results) == 6, "\n".join(report.failure_lines())
        assert all(r.compared > 0 for r in report.results), [(r.case, r.dtype, r.compared) for r in report.results]


def test_slow_backends_keep_whole_models_for_the_full_tier():
    slow = ReferenceBackend()
    slow.conformance_scale = {"cpu": "tiny"}
    quick = run_suite(slow, "cpu", ["float32"], ops=["model:*", "layer:*"], progress=False, record=False)
    assert quick.passed and {r.op for r in quick.results} == {"layer:debug", "layer:debug-deepseek"}
    full = run_suite(slow, "cpu", ["float32"], tier="full", ops=["model:*"], progress=False, record=False)
    assert full.passed and {r.case for r in full.results} == {"batch=8,seq=2"}


def test_compiled_once_per_graph_signature(monkeypatch):
    compiles = []
    real = ReferenceBackend.compile

    def counting(self, graph, device, options):
        compiles.append(graph.name)
        return real(self, graph, device, options)
    monkeypatch.setattr(ReferenceBackend, "compile", counting)
    threads = torch.get_num_threads()
    report = run_suite(ReferenceBackend(), "cpu", ["float32"], ops=["swiglu"], progress=False, record=False)
    assert report.passed and len(report.results) > 10
    assert compiles == ["conformance-swiglu"]          # every sample of the op shares one graph signature
    assert torch.get_num_threads() == threads          # the suite's single thread is given back
