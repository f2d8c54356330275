"""What a new user meets first: startup time, --version, refusals that come before any output or file,
and messages that say what happened."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import portable_moe
from portable_moe.cli.main import main


def cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-P", "-m", "portable_moe.cli.main", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)


def test_help_and_version_import_nothing_heavy():
    probe = ("import sys; from portable_moe.cli.main import main\n"
             "for argv in (['--help'], ['--version']):\n"
             "    try: main(argv)\n"
             "    except SystemExit: pass\n"
             "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'tvm', 'triton', 'onnx', "
             "'onnxruntime', 'transformers'})\n"
             "print('HEAVY', heavy)")
    r = subprocess.run([sys.executable, "-P", "-c", probe], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in r.stdout, r.stdout + r.stderr


def test_help_and_version_start_fast():
    """Under a second of CPU (wall time on a shared machine says little; CPU time is what startup costs)."""
    for argv in (["--help"], ["--version"]):
        before = os.times()
        r = cli(*argv)
        after = os.times()
        cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        assert r.returncode == 0 and cpu < 1.0, (argv, cpu)


def test_version_comes_from_package_metadata(capsys):
    from importlib.metadata import version
    assert portable_moe.__version__ == version("portable-moe")
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"portable-moe {portable_moe.__version__}"


def test_subcommand_help_still_complete(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("devices", "demo", "compile", "conformance", "plan", "export", "train", "import-hf", "bench", "ir"):
        assert name in out


def test_compile_refuses_every_target_before_creating_anything(tmp_path, capsys):
    out = tmp_path / "aot"
    assert main(["compile", "debug", "--layer", "--target", "cpu", "--target", "cuda:sm_999", "-o", str(out)]) == 2
    assert "unknown target 'cuda:sm_999'" in capsys.readouterr().err
    assert not out.exists()


def test_compile_target_error_names_the_valid_forms(tmp_path, capsys):
    assert main(["compile", "debug", "--target", "nvidia", "-o", str(tmp_path / "aot")]) == 2
    err = capsys.readouterr().err
    assert "unknown target 'nvidia'" in err and "cuda:sm_90" in err and "rocm:gfx942" in err
    assert "--backend" not in err and not (tmp_path / "aot").exists()


def test_compile_says_what_was_not_lowered_and_manifest_has_no_absolute_cache_path(tmp_path, capsys):
    out = tmp_path / "aot"
    assert main(["compile", "debug", "--target", "cuda:sm_90", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    manifest = json.loads((out / "cuda_sm_90" / "manifest.json").read_text())
    skipped = len(manifest["not_lowered"])
    assert skipped and f"{skipped} of 33 nodes not lowered" in text and "fall back at run time" not in text
    assert "fall back to the next backend" in text
    raw = (out / "cuda_sm_90" / "manifest.json").read_text()
    assert str(Path(os.environ["PORTABLE_MOE_CACHE_DIR"])) not in raw and tempfile.gettempdir() not in raw


def test_demo_rejects_its_backend_before_printing_anything():
    r = cli("demo", "--backend", "cuda")
    assert r.returncode == 2 and r.stdout == ""
    assert "unknown backend 'cuda'" in r.stderr and "--device cuda" in r.stderr and "Traceback" not in r.stderr


def test_demo_leaves_no_temporary_folder(tmp_path):
    r = cli("demo", "--skip", "conformance", "--skip", "backends", "--skip", "compile", "--skip", "onnx",
            "--skip", "balance", "--skip", "train", "--skip", "hf", env={"TMPDIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "pass --out DIR to keep them" in r.stdout
    assert not list(tmp_path.glob("portable-moe-demo-*"))


@pytest.mark.parametrize("argv", [["export", "debug", "-o", "x.onnx", "--dtype", "float33"],
                                  ["export", "debug", "-o", "x.onnx", "--dtype", "int32"],
                                  ["conformance", "--dtype", "int64"],
                                  ["bench", "--dtype", "int32"]])
def test_dtype_choices_are_the_float_dtypes_and_listed(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "choose from 'float32', 'float16', 'bfloat16', 'float64'" in err


def test_conformance_api_refuses_integer_dtypes():
    from portable_moe.conformance.known import ConformanceError
    from portable_moe.conformance.runner import parse_dtypes
    with pytest.raises(ConformanceError, match="choose from float32"):
        parse_dtypes(["int32"])


def readme_commands() -> tuple[dict[str, str], list[str]]:
    """The README's synopsis line per command, and every `portable-moe` line of its examples."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    block = text.split("## Commands", 1)[1].split("```", 2)[1]
    synopsis, key = {}, None
    for line in block.splitlines():
        words = line.split()
        if len(words) > 1 and words[0] == "portable-moe":
            key = " ".join(words[1:3]) if words[1] == "ir" else words[1]
        if key and words:                       # a line that starts with spaces continues the one above
            synopsis[key] = synopsis.get(key, "") + " " + line
    section = text.split("## Examples", 1)[1].split("\n## ", 1)[0]
    examples = [ln.strip() for ln in section.splitlines() if "portable-moe " in ln and not ln.startswith("#")]
    return synopsis, examples


def test_readme_synopses_list_the_options_their_examples_use():
    synopsis, examples = readme_commands()
    missing = []
    for line in examples:
        for command in line.split("&&"):
            words = command.split("portable-moe ", 1)[-1].split()
            key = " ".join(words[:2]) if words[0] == "ir" else words[0]
            assert key in synopsis, f"no synopsis for '{key}'"
            missing += [(key, w) for w in words if w.startswith("--") and w not in synopsis[key]]
    assert not missing, missing

