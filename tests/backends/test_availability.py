"""A backend is usable only where its imports succeed: a missing optional component is a reason, shown
in one line by `portable-moe devices` and the demo, never a traceback."""

import subprocess
import sys

from portable_moe.backends import base
from portable_moe.backends.devices import cpu_device
from portable_moe.backends.triton import TritonBackend
from portable_moe.backends.tvm import TVMBackend

WITHOUT = "import sys; sys.modules[{mod!r}] = None; from portable_moe.cli.main import main; sys.exit(main({argv!r}))"


def run_without(module: str, *argv: str) -> subprocess.CompletedProcess:
    code = WITHOUT.format(mod=module, argv=list(argv))
    return subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=300)


def test_import_failure_names_the_module_and_the_reason(monkeypatch):
    base.import_failure.cache_clear()
    monkeypatch.setitem(sys.modules, "tvm", None)
    try:
        assert base.import_failure("tvm").startswith("tvm not importable: ")
        assert TVMBackend().availability(cpu_device()) == base.import_failure("tvm")
        assert base.import_failure("json") is None
    finally:
        base.import_failure.cache_clear()


def test_triton_without_triton_is_unusable_with_the_reason(monkeypatch):
    base.import_failure.cache_clear()
    monkeypatch.setitem(sys.modules, "triton", None)
    try:
        assert TritonBackend().availability(cpu_device()).startswith("triton not importable")
    finally:
        base.import_failure.cache_clear()


def test_devices_says_tvm_is_not_usable_where_it_cannot_import():
    r = run_without("tvm", "devices")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    tvm_cpu = next(line for line in r.stdout.splitlines() if line.split()[:2] == ["tvm", "cpu"])
    assert "not usable: tvm not importable" in tvm_cpu
    cpu_selection = next(line for line in r.stdout.split("selection (float32):")[1].splitlines() if "cpu" in line)
    assert "tvm" not in cpu_selection


def test_demo_compile_section_says_why_instead_of_a_traceback(monkeypatch, tmp_path, capsys):
    from portable_moe.cli import demo, demo_sections

    base.import_failure.cache_clear()
    monkeypatch.setitem(sys.modules, "tvm", None)
    monkeypatch.setattr(demo_sections, "AOT_TARGETS", (("tvm", "cuda:sm_90"), ("tvm", "opencl")))
    try:
        ok = demo.run_section(demo_sections.SECTIONS["compile"], graph=None, params=None, device=cpu_device(),
                              out=tmp_path)
    finally:
        base.import_failure.cache_clear()
    out = capsys.readouterr().out
    assert ok and out.count("not here: tvm not importable") == 2 and "Traceback" not in out


def test_a_section_that_hits_a_missing_module_is_one_line(capsys):
    from portable_moe.cli import demo, demo_sections

    def needs_missing(**_):
        import portable_moe_no_such_module  # noqa: F401

    assert demo.run_section(demo_sections.Section("x", needs_missing))
    assert capsys.readouterr().out.startswith("not here: portable_moe_no_such_module is not importable")
