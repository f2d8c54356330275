"""The suite must fail every deliberately broken backend, naming the op and the check; declarations
are tested (a declined op must be refused with BackendError; a claimed one must compile)."""

import pytest
from faulty_backends import ClaimsButRefuses, CrashesOnRefusal, RefusesCleanly, Unavailable, faulty_backends

from portable_moe.conformance.runner import run_suite


def run(backend, ops, dtypes=("float32",)):
    return run_suite(backend, "cpu", list(dtypes), ops=ops, progress=False, record=False)


@pytest.mark.parametrize("backend", faulty_backends(), ids=lambda b: b.name)
def test_each_faulty_backend_is_caught(backend):
    op, check = backend.expect
    report = run(backend, [op], [backend.dtype])
    assert not report.passed
    caught = [r for r in report.failures() if r.op == op and check in r.checks]
    assert caught, f"{backend.name}: no failure of {op} with check '{check}'; got " \
                   f"{[(r.op, r.case, r.checks) for r in report.failures()]}"
    r = caught[0]
    assert r.seed and r.backend == backend.name and "--seed" in r.reproduce
    assert any(f"[{check}]" in line for line in report.failure_lines())


def test_faults_show_in_whole_model_cases():
    drops = next(b for b in faulty_backends() if b.name == "faulty-drops-expert")
    report = run(drops, ["layer:debug"])
    assert report.failures() and all(r.op == "layer:debug" for r in report.failures())
    assert any("ran on: faulty-drops-expert" in n for r in report.results for n in r.notes)


def test_a_declined_op_must_be_refused_with_backend_error():
    crash = run(CrashesOnRefusal(), ["swiglu"])
    assert [r.checks for r in crash.failures()] == [["declaration"]]
    assert "KeyError" in crash.failures()[0].failures[0][1]
    clean = run(RefusesCleanly(), ["swiglu", "combine"])
    assert clean.passed
    declined = [r for r in clean.results if r.status == "declined"]
    assert [(r.op, r.reason) for r in declined] == [("swiglu", "not written yet")]


def test_a_claimed_op_must_compile():
    report = run(ClaimsButRefuses(), ["swiglu"])
    assert report.failures() and all(r.checks == ["compile"] for r in report.failures())


def test_unavailable_backends_are_listed_not_counted(monkeypatch):
    from portable_moe import registry
    real = registry.load

    def load(name):
        if name == "broken":
            raise registry.BackendUnavailable("broken: cannot load (no module named broken)")
        return real(name)
    monkeypatch.setattr(registry, "load", load)
    report = run_suite(["reference", "broken", Unavailable()], "cpu", ["float32"], ops=["swiglu"], progress=False,
                       record=False)
    verdicts = {t.backend: t.verdict for t in report.targets}
    assert verdicts["reference"] == "ran"
    assert verdicts["broken"].startswith("unavailable: broken: cannot load")
    assert verdicts["unavailable-here"] == "unavailable: needs a device this machine lacks"
    assert report.passed
    assert any("unavailable" in line for line in report.summary_lines())
