"""The backends' artifact store: digests kept apart and verified on every load, rebuilt on mismatch,
untrusted folders never used, names never paths."""

from __future__ import annotations

import json
import os

import pytest

from portable_moe.backends import cache
from portable_moe.backends.cache import DIGEST_SUFFIX, Store, safe_name


def builder(calls: list, payload: bytes = b"\x7fELF kernel bytes"):
    def build(folder):
        calls.append(folder)
        (folder / "lib.so").write_bytes(payload)
        return {"note": "built"}
    return build


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "cache"
    return Store(root, "test")


def test_miss_then_verified_hit(store):
    calls = []
    first = store.fetch("k1", builder(calls))
    again = store.fetch("k1", builder(calls))
    assert (first.hit, again.hit, len(calls)) == (False, True, 1)
    assert again.meta == {"note": "built"} and again.read("lib.so") == b"\x7fELF kernel bytes"
    record = json.loads((store.root / f"k1{DIGEST_SUFFIX}").read_text())
    assert set(record["files"]) == {"lib.so"}              # the digest lives apart from the artifact folder
    assert not (first.path / f"lib.so{DIGEST_SUFFIX}").exists()


@pytest.mark.parametrize("damage", ["flip", "append", "replace_and_rewrite_beside"])
def test_a_changed_artifact_is_rebuilt_saying_so(store, capsys, damage):
    calls = []
    entry = store.fetch("k", builder(calls))
    lib = entry.path / "lib.so"
    data = bytearray(lib.read_bytes())
    if damage == "flip":
        data[3] ^= 0xFF
    elif damage == "append":
        data += b"appended"
    else:     # a foreign library with its own sha256 written beside it, as an attacker would
        data = bytearray(b"\x7fELF foreign constructor")
        (entry.path / "lib.so.sha256").write_text(cache.sha256_bytes(bytes(data)))
    lib.write_bytes(bytes(data))
    again = store.fetch("k", builder(calls))
    assert not again.hit and len(calls) == 2
    assert again.read("lib.so") == b"\x7fELF kernel bytes"
    assert "rebuilt" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["json", "not_object", "directory", "folder_is_file", "folder_missing",
                                    "path_in_files", "symlinked_file", "meta_changed"])
def test_corrupt_metadata_is_rebuilt_without_traceback(store, capsys, damage, tmp_path):
    calls = []
    entry = store.fetch("k", builder(calls))
    digest = store.root / f"k{DIGEST_SUFFIX}"
    if damage == "json":
        digest.write_text("{not json")
    elif damage == "not_object":
        digest.write_text("[1, 2]")
    elif damage == "directory":
        digest.unlink()
        digest.mkdir()
    elif damage == "folder_is_file":
        for p in entry.path.iterdir():
            p.unlink()
        entry.path.rmdir()
        entry.path.write_text("x")
    elif damage == "folder_missing":
        (entry.path / "lib.so").unlink()
    elif damage == "meta_changed":
        record = json.loads(digest.read_text())
        record["meta"]["note"] = "edited"
        digest.write_text(json.dumps(record))
    elif damage == "path_in_files":
        record = json.loads(digest.read_text())
        record["files"] = {"../../outside.so": record["files"]["lib.so"]}
        digest.write_text(json.dumps(record))
    else:
        target = tmp_path / "elsewhere.so"
        target.write_bytes((entry.path / "lib.so").read_bytes())
        (entry.path / "lib.so").unlink()
        (entry.path / "lib.so").symlink_to(target)
    again = store.fetch("k", builder(calls))
    assert not again.hit and len(calls) == 2 and again.read("lib.so") == b"\x7fELF kernel bytes"
    assert "rebuilt" in capsys.readouterr().err
    assert store.fetch("k", builder(calls)).hit


def test_a_foreign_entry_without_our_digest_is_never_used(store):
    (store.root / "k").mkdir(parents=True)
    (store.root / "k" / "lib.so").write_bytes(b"planted")
    calls = []
    entry = store.fetch("k", builder(calls))
    assert len(calls) == 1 and entry.read("lib.so") == b"\x7fELF kernel bytes"


@pytest.mark.parametrize("problem", ["group_writable", "other_writable", "not_owner"])
def test_an_untrusted_root_runs_uncached_with_a_warning(tmp_path, capsys, monkeypatch, problem):
    root = tmp_path / "shared"
    root.mkdir()
    os.chmod(root, 0o775 if problem == "group_writable" else 0o757 if problem == "other_writable" else 0o700)
    if problem == "not_owner":
        monkeypatch.setattr(os, "getuid", lambda: os.stat(root).st_uid + 1)
    store, calls = Store(root, "test"), []
    entry = store.fetch("k", builder(calls))
    assert entry.read("lib.so") == b"\x7fELF kernel bytes"
    assert root not in entry.path.parents and list(root.iterdir()) == []
    err = capsys.readouterr().err
    assert "cache not used" in err and "uncached" in err and "\n" == err[-1] and err.count("\n") == 1


def test_an_unwritable_root_runs_uncached(tmp_path, capsys):
    root = tmp_path / "ro"
    root.mkdir()
    os.chmod(root, 0o500)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("running as a user who may write anywhere")
        entry = Store(root / "sub", "test").fetch("k", builder([]))
        assert entry.read("lib.so") == b"\x7fELF kernel bytes"
        assert "uncached" in capsys.readouterr().err
    finally:
        os.chmod(root, 0o700)


def test_files_are_sealed_against_a_loose_umask(store):
    old = os.umask(0o002)
    try:
        calls = []
        store.fetch("k", builder(calls))
        assert store.fetch("k", builder(calls)).hit and len(calls) == 1
    finally:
        os.umask(old)


def test_keys_and_names():
    assert cache.make_key(a=1, b="x") == cache.make_key(b="x", a=1) != cache.make_key(a=2, b="x")
    for hostile in ("../" * 12 + "tmp/ESCAPED", "..", ".", "a/b", "x\nnl", "", "é" * 400):
        name = safe_name(hostile)
        assert "/" not in name and not name.startswith(".") and 0 < len(name) <= 80
    assert safe_name("layers.0.router") == "layers.0.router"
    assert safe_name("a/b") != safe_name("a_b")


def test_read_json_of_a_cache_never_raises(tmp_path, capsys):
    bad = tmp_path / "tuned.json"
    for content in ("{", "[]", "\xff"):
        bad.write_text(content, errors="surrogateescape") if content != "\xff" else bad.write_bytes(b"\xff")
        assert cache.read_json(bad, "tuned configs") == {}
    bad.unlink()
    bad.mkdir()
    assert cache.read_json(bad, "tuned configs") == {}
    assert capsys.readouterr().err.count("ignored") == 4


def test_tuned_configs_survive_an_unwritable_cache(tmp_path, capsys):
    from portable_moe.backends.triton.tuning import GemmConfig, TuningCache

    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    tuned = TuningCache(blocker / "triton")
    tuned.put("sm_90", "swiglu", "bfloat16", 4096, 7168, 3000, GemmConfig(64, 256, 64, 8, 4))
    assert tuned.get("sm_90", "swiglu", "bfloat16", 4096, 7168, 3000) == (GemmConfig(64, 256, 64, 8, 4), None)
    assert "not saved" in capsys.readouterr().err
