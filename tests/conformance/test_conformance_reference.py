"""The reference in float32/float16/bfloat16 passes against itself in float64 on the MoE ops and the
small models; exact router ties are kept (and must follow the lower-index rule), near ties excluded."""

import pytest

from portable_moe.conformance.runner import run_suite

pytestmark = pytest.mark.slow       # the whole suite on the reference: `nox -s slow`

MOE = ["router", "dispatch", "grouped_matmul", "swiglu", "combine"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reference_passes_the_moe_ops(dtype):
    report = run_suite("reference", "cpu", [dtype], ops=MOE, progress=False, record=False)
    assert report.passed, "\n".join(report.failure_lines())
    names = {r.case for r in report.results}
    for edge in ("edge:zero-tokens", "edge:one-token", "edge:nan", "edge:large", "edge:non-contiguous",
                 "edge:empty-experts", "softmax:edge:ties-all", "sigmoid-groups:edge:ties-pairs",
                 "softmax:edge:all-to-one-expert", "tile-edge:tokens=17", "edge:segments-at-tile-edges"):
        assert edge in names, edge
    ties = [r for r in report.results if "ties" in r.case]
    assert ties and all(r.excluded_tokens == 0 for r in ties)     # exact ties are checked, never excluded
    assert all(r.errors for r in report.results if r.status == "passed")


def test_reference_passes_the_models_in_float16():
    report = run_suite("reference", "cpu", ["float16"], ops=["layer:debug-deepseek", "model:debug"], progress=False,
                       record=False)
    assert report.passed, "\n".join(report.failure_lines())
    model = next(r for r in report.results if r.op == "model:debug")
    assert "d/dembed.weight" in model.errors and model.errors["lm_head"]["worst_ratio"] <= 1
    assert model.compared > 0, "every position excluded: the model comparison would be vacuous"


def test_verdicts_go_to_the_results_cache(monkeypatch):
    from portable_moe.backends.devices import cpu_device
    from portable_moe.conformance import runner
    from portable_moe.runtime import results
    assert run_suite("reference", "cpu", ["float32"], ops=["swiglu"], progress=False).passed
    assert results.lookup("reference", cpu_device(), "float32") is None     # a filtered run proves nothing
    monkeypatch.setattr(runner, "CASES", {"swiglu": runner.CASES["swiglu"]})  # the whole suite, made small
    report = run_suite("reference", "cpu", ["float32"], progress=False)
    assert report.passed
    entry = results.lookup("reference", cpu_device(), "float32")
    assert entry["passed"] is True and entry["cases_passed"] > 0
    assert entry["cases_failed"] == 0 and entry["tier"] == "quick" and entry["ops"] == ["swiglu"]
