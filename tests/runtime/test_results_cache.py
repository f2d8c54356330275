"""The conformance results cache: concurrent writers merge under a lock, a malformed file is ignored
(with a warning) and rebuilt, an unwritable cache costs the record and never the finished run."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from portable_moe.backends.devices import cpu_device
from portable_moe.runtime import results


def write_one(path: str, i: int):
    results.record(f"backend{i}", cpu_device(), "float32", True, {"tier": "quick"}, path=Path(path))


def test_sixteen_concurrent_writers_keep_sixteen_records(tmp_path):
    path = tmp_path / "conformance-results.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=write_one, args=(str(path), i)) for i in range(16)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 16
    kept = results.read(path)
    assert sorted(kept) == sorted(f"backend{i}|cpu|{cpu_device().name}|{cpu_device().arch}|float32" for i in range(16))


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"format": "portable_moe.conformance-results", "results": 3}',
                                     b"\xff\xfe", b"[" * 100000])
def test_a_malformed_file_is_ignored_then_rebuilt(tmp_path, capsys, content, monkeypatch):
    monkeypatch.setattr(results, "WARNED", set())
    path = tmp_path / "conformance-results.json"
    path.write_bytes(content)
    assert results.lookup("reference", cpu_device(), "float32", path) is None
    assert results.lookup("tvm", cpu_device(), "float32", path) is None
    err = capsys.readouterr().err
    assert err.count("ignored") == 1 and err.count("\n") == 1
    assert results.record("reference", cpu_device(), "float32", True, {}, path)
    assert results.lookup("reference", cpu_device(), "float32", path)["passed"] is True
    assert json.loads(path.read_text())["format"] == results.FORMAT


def test_selection_survives_a_malformed_file(tmp_path, monkeypatch):
    from portable_moe.ir import DType
    from portable_moe.runtime.select import select

    monkeypatch.setenv("PORTABLE_MOE_CACHE_DIR", str(tmp_path))
    (tmp_path / "conformance-results.json").write_text("{not json")
    assert select(cpu_device(), DType.float32).winner


def test_an_unwritable_cache_warns_and_keeps_going(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    assert results.record("reference", cpu_device(), "float32", True, {}, blocker / "sub" / "r.json") is False
    assert "not recorded" in capsys.readouterr().err


def test_conformance_with_an_unwritable_cache_still_writes_its_reports(tmp_path, monkeypatch, capsys):
    from portable_moe.cli.main import main
    from portable_moe.conformance import runner

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("PORTABLE_MOE_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(runner, "CASES", {"swiglu": runner.CASES["swiglu"]})   # this run counts as whole: it records
    report, html = tmp_path / "r.json", tmp_path / "r.html"
    code = main(["conformance", "--backend", "reference", "--op", "swiglu", "--dtype", "float32", "--no-progress",
                 "--json", str(report), "--html", str(html)])
    assert code == 0 and report.exists() and html.exists()
    assert "not recorded" in capsys.readouterr().err
    assert os.path.isfile(blocker)
