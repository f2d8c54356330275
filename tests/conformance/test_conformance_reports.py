"""Reports (JSON, JUnit XML, HTML matrix), known failures as data, the CLI's exit status, the
pytest plug-in."""

import argparse
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from faulty_backends import faulty_backends

from portable_moe.cli import conformance as cli
from portable_moe.conformance.known import ConformanceError, load_known
from portable_moe.conformance.report import write_html, write_json, write_junit
from portable_moe.conformance.runner import run_suite
from portable_moe.ir import DType


@pytest.fixture(scope="module")
def mixed_report():
    nan_to_zero = next(b for b in faulty_backends() if b.name == "faulty-nan-to-zero")
    return run_suite(["reference", nan_to_zero], "cpu", ["float32", "bfloat16"], ops=["swiglu", "combine"],
                     progress=False, record=False)


def test_json_records_device_versions_and_errors(mixed_report, tmp_path):
    write_json(mixed_report, tmp_path / "r.json")
    obj = json.loads((tmp_path / "r.json").read_text())
    assert obj["passed"] is False
    target = obj["targets"][0]
    assert {"vendor", "name", "arch", "driver"} <= set(target["device_info"])
    assert target["versions"]["torch"] and "portable-moe" in target["versions"]
    case = next(r for r in obj["results"] if r["status"] == "passed")
    assert "worst_ratio" in case["errors"]["swiglu"] or "worst_ratio" in case["errors"]["combine"]
    bad = next(r for r in obj["results"] if r["status"] == "failed")
    assert bad["op"] == "swiglu" and bad["failures"][0]["check"] == "nan-propagation" and bad["seed"]


def test_junit_has_one_testcase_per_sample(mixed_report, tmp_path):
    write_junit(mixed_report, tmp_path / "r.xml")
    root = ET.parse(tmp_path / "r.xml").getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == len(mixed_report.results)
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == len(mixed_report.failures()) and "nan-propagation" in failed[0].find("failure").get("type")


def test_html_is_a_matrix_per_backend_and_device(mixed_report, tmp_path):
    write_html(mixed_report, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert html.count("<table>") == 2 and "faulty-nan-to-zero on cpu" in html
    assert "<th>float32</th><th>bfloat16</th>" in html and "<th class=op>swiglu</th>" in html
    assert "#f4a6a6" in html and "#a8dba8" in html and "worst error" in html


def test_known_failures_turn_failures_into_xfail_with_reason(tmp_path):
    (tmp_path / "faulty-nan-to-zero.json").write_text(json.dumps({"backend": "faulty-nan-to-zero", "known_failures": [
        {"op": "swiglu", "case": "edge:nan", "check": "nan-propagation", "reason": "flushes NaN (issue 7)"},
        {"op": "combine", "reason": "never fails: must be reported stale"}]}))
    nan_to_zero = next(b for b in faulty_backends() if b.name == "faulty-nan-to-zero")
    report = run_suite(nan_to_zero, "cpu", ["float32"], ops=["swiglu", "combine"], progress=False, record=False,
                       known_dir=tmp_path)
    assert report.passed
    xfails = [(r.case, r.reason) for r in report.results if r.status == "xfail"]
    assert xfails == [("edge:nan", "flushes NaN (issue 7)")]
    assert [e["op"] for e in report.targets[0].stale_known_failures] == ["combine"]


def test_known_failures_need_a_reason(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"known_failures": [{"op": "swiglu"}]}))
    with pytest.raises(ConformanceError, match="reason"):
        load_known("x", tmp_path)
    (tmp_path / "y.json").write_text(json.dumps({"known_failures": [{"op": "swiglu", "reason": "r", "bogus": 1}]}))
    with pytest.raises(ConformanceError, match="bogus"):
        load_known("y", tmp_path)


def cli_run(argv):
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["conformance", *argv])
    return args.func(args)


def test_cli_exit_status_tells_the_truth(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    assert cli_run(["--backend", "reference", "--op", "swiglu", "--dtype", "float32", "--no-progress",
                    "--json", str(out), "--html", str(tmp_path / "r.html"), "--junit", str(tmp_path / "r.xml")]) == 0
    assert json.loads(out.read_text())["passed"] and (tmp_path / "r.html").exists() and (tmp_path / "r.xml").exists()
    assert "PASSED" in capsys.readouterr().out
    from portable_moe import registry
    broken = next(b for b in faulty_backends() if b.name == "faulty-one-short")
    real = registry.load
    monkeypatch.setattr(registry, "load", lambda name: broken if name == broken.name else real(name))
    assert cli_run(["--backend", broken.name, "--op", "combine", "--dtype", "float32", "--no-progress"]) == 1
    text = capsys.readouterr().out
    assert "FAIL faulty-one-short cpu float32 combine/" in text and "[written]" in text and "reproduce:" in text


@pytest.mark.slow
def test_pytest_plugin_runs_the_suite_as_tests(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path),
                           "--conformance=reference", "--conformance-op=swiglu", "--conformance-dtype=float32"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    from portable_moe.conformance.runner import Runner
    expected = len(Runner("quick", ["float32"], ["swiglu"]).samples("quick", DType.float32))
    assert f"{expected} passed" in proc.stdout
