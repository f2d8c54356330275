"""Fuzzed user files through the CLI and fuzzed cache files through the stores: each ends in a correct
result or one error line with exit status 2 — never a traceback, never a hang. Seeded (derandomized)
and bounded: the whole file runs in well under a minute."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from hf_tiny import make_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from json_mutation import mutate, paths

from portable_moe.backends.cache import DIGEST_SUFFIX, Store
from portable_moe.backends.devices import cpu_device
from portable_moe.cli.main import main
from portable_moe.ir import to_dict
from portable_moe.models import build_model, build_moe_layer, preset
from portable_moe.runtime import results


def fuzz(examples: int):
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
LIMIT_S = 30

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.sampled_from([0, -1, 10**12, 2**70, 10**400]),
                 st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["*", "", "../x", "a\nb", "tokens"]),
                 st.text(max_size=6), st.lists(st.integers(-2, 9), max_size=3),
                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def cli(argv: list[str], capfd) -> tuple[int, str]:
    """Runs the CLI in a thread under a time limit; only a return code may come back."""
    result: dict = {}

    def target():
        try:
            result["code"] = main(argv)
        except BaseException as e:      # noqa: BLE001 - the very thing this test forbids
            result["escaped"] = e

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(LIMIT_S)
    assert not worker.is_alive(), f"{argv} still running after {LIMIT_S}s"
    assert "escaped" not in result, f"{argv} raised {result.get('escaped')!r}"
    err = capfd.readouterr().err
    if result["code"] != 0:
        lines = [line for line in err.splitlines() if "error:" in line]
        assert result["code"] == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return result["code"], err


def dumps(obj) -> str:
    def big(o):
        return o if not isinstance(o, int) or abs(o) < 10**300 else float("inf")
    try:
        return json.dumps(obj)
    except (ValueError, OverflowError):
        return json.dumps(json.loads(json.dumps(obj, default=big)))


IR_BASES = [to_dict(build_moe_layer(preset("debug-deepseek"))), to_dict(build_model(preset("debug")))]


@fuzz(80)
@given(base=st.sampled_from(range(len(IR_BASES))), data=st.data(),
       action=st.sampled_from(["replace", "delete", "duplicate"]), junk=JUNK)
def test_fuzzed_ir_files(tmp_path, capfd, base, data, action, junk):
    obj = json.loads(json.dumps(IR_BASES[base]))
    path = data.draw(st.sampled_from(list(paths(obj))))
    file = tmp_path / "g.json"
    file.write_text(dumps(mutate(obj, path, action, junk)))
    code, _ = cli(["ir", "verify", str(file)], capfd)
    if code == 0:      # accepted: then every reader of it works too, and its values are usable
        assert cli(["ir", "print", str(file)], capfd)[0] == 0
        for node in json.loads(file.read_text())["nodes"]:
            assert all(math.isfinite(v) for v in node.get("attrs", {}).values() if isinstance(v, float))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "mixtral"
    make_model("mixtral").save_pretrained(path)
    return path


@fuzz(60)
@given(data=st.data(), action=st.sampled_from(["replace", "delete"]), junk=JUNK)
def test_fuzzed_hf_configs(hf_dir, tmp_path, capfd, data, action, junk):
    cfg = json.loads((hf_dir / "config.json").read_text())
    path = data.draw(st.sampled_from([p for p in paths(cfg) if p]))
    work = tmp_path / "in"
    work.mkdir(exist_ok=True)
    shutil.copy(hf_dir / "model.safetensors", work / "model.safetensors")
    (work / "config.json").write_text(dumps(mutate(cfg, path, action, junk)))
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    code, _ = cli(["import-hf", str(work), "-o", str(out)], capfd)
    if code == 0:
        assert cli(["ir", "verify", str(out / "graph.json")], capfd)[0] == 0


PAYLOAD = b"\x7fELF the bytes this cache built"


def build(folder: Path) -> dict:
    (folder / "lib.so").write_bytes(PAYLOAD)
    return {"stages": {"so": "lib.so"}}


@fuzz(60)
@given(target=st.sampled_from(["digest", "artifact", "results", "tuned"]), data=st.data(), junk=JUNK,
       raw=st.binary(max_size=64))
def test_fuzzed_cache_files(tmp_path, capfd, target, data, junk, raw):
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))        # one per example (tmp_path is per test)
    root = tmp_path / "cache"
    store = Store(root, "fuzz")
    entry = store.fetch("k", build)
    if target == "digest":
        file = root / f"k{DIGEST_SUFFIX}"
        record = json.loads(file.read_text())
        path = data.draw(st.sampled_from(list(paths(record))))
        file.write_bytes(raw if data.draw(st.booleans()) else dumps(mutate(record, path, "replace", junk)).encode())
    elif target == "artifact":
        (entry.path / "lib.so").write_bytes(raw)
    if target in ("digest", "artifact"):
        again = store.fetch("k", build)
        assert again.read("lib.so") == PAYLOAD and again.meta == {"stages": {"so": "lib.so"}}
    elif target == "results":
        file = tmp_path / "conformance-results.json"
        good = {"format": results.FORMAT, "version": 1, "results": {"x": {"passed": True}}}
        path = data.draw(st.sampled_from(list(paths(good))))
        file.write_bytes(raw if data.draw(st.booleans()) else dumps(mutate(good, path, "replace", junk)).encode())
        assert isinstance(results.read(file), dict)
        assert results.record("reference", cpu_device(), "float32", True, {}, file)
        assert results.lookup("reference", cpu_device(), "float32", file)["passed"] is True
    else:
        from portable_moe.backends.triton import tuning

        args = ("sm_90", "swiglu", "bfloat16", 4096, 7168, 3000)
        entries = data.draw(st.sampled_from([junk, {tuning.TuningCache.key(*args): junk}]))
        table = {"format": tuning.FORMAT, "version": tuning.VERSION, "entries": entries}
        (root / "tuned.json").write_bytes(raw if data.draw(st.booleans()) else dumps(table).encode())
        cfg, _ = tuning.TuningCache(root).get(*args)
        assert cfg.block_m > 0
    assert "Traceback" not in capfd.readouterr().err
