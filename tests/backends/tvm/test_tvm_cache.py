"""TVM's compiled libraries and ahead-of-time artifacts live in the backends' artifact store: a second
compile or lower loads instead of compiling; a replaced library is rebuilt, never loaded."""

from __future__ import annotations

import json

import torch
from tvm_helpers import assert_matches, reference64

from portable_moe.backends import cache
from portable_moe.backends.cache import DIGEST_SUFFIX
from portable_moe.models import build_moe_layer, init_params, preset


def libraries(root):
    return sorted(root.glob("*/kernel.so"))


def test_second_compile_hits_and_a_replaced_library_is_rebuilt(backend, tmp_path, capfd):
    from portable_moe.backends.devices import cpu_device

    graph = build_moe_layer(preset("debug"))
    params = init_params(graph, 0)
    options = backend.Options(cache_dir=str(tmp_path))
    cache.STATS.clear()
    backend.compile(graph, cpu_device(), options)
    first = dict(cache.STATS)
    assert first.get("miss", 0) >= 5 and not first.get("hit")
    assert len(libraries(tmp_path)) == first["miss"]

    cache.STATS.clear()
    backend.compile(graph, cpu_device(), options)
    assert dict(cache.STATS) == {"hit": first["miss"]}

    victim = libraries(tmp_path)[0]
    # a foreign library in its place, with its sha256 rewritten beside it (a new file: writing into a
    # library this process has mapped would crash it)
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"\x7fELF not ours" + victim.read_bytes()[64:])
    foreign.replace(victim)
    (victim.parent / "kernel.so.sha256").write_text(cache.sha256_bytes(victim.read_bytes()))
    cache.STATS.clear()
    capfd.readouterr()
    exe = backend.compile(graph, cpu_device(), options)
    assert cache.STATS["corrupt"] == 1
    assert "does not match its digest" in capfd.readouterr().err
    record = json.loads((victim.parent.parent / f"{victim.parent.name}{DIGEST_SUFFIX}").read_text())
    assert cache.sha256_bytes(victim.read_bytes()) == record["files"]["kernel.so"]
    x = {"x": torch.randn(9, 64)}
    assert_matches(exe.run(x, params), reference64(graph, x, params))


def test_ahead_of_time_artifacts_are_cached_by_graph_and_target(backend, tmp_path, capfd):
    graph = build_moe_layer(preset("debug"))
    options = backend.Options(cache_dir=str(tmp_path / "cache"))
    first = backend.lower(graph, "opencl", tmp_path / "a", options)
    assert not any(k["cache_hit"] for k in first["kernels"])
    assert "compiling the kernels not in the cache" in capfd.readouterr().err      # progress while compiling
    again = backend.lower(graph, "opencl", tmp_path / "b", options)
    assert [k["cache_hit"] for k in again["kernels"]] == [True] * 5
    assert "compiling" not in capfd.readouterr().err
    for a, b in zip(first["kernels"], again["kernels"]):
        assert a["artifacts"] == b["artifacts"] and a["sha256"] == b["sha256"]
    other = backend.lower(graph, "metal", tmp_path / "c", options)          # another target: other entries
    assert not any(k["cache_hit"] for k in other["kernels"])


def test_key_changes_with_target_and_spec():
    from portable_moe.backends.tvm.lower import entry_key

    a = entry_key({"op": "swiglu", "F": 8}, "cpu")
    assert a == entry_key({"op": "swiglu", "F": 8}, "cpu")
    assert a != entry_key({"op": "swiglu", "F": 16}, "cpu")
    assert a != entry_key({"op": "swiglu", "F": 8}, "opencl")
    assert entry_key({"op": "swiglu", "F": 8}, "cuda:sm_80") != entry_key({"op": "swiglu", "F": 8}, "cuda:sm_90")


def test_the_executable_loads_what_lowering_for_its_device_built(backend, tmp_path):
    from portable_moe.backends.devices import cpu_device

    graph = build_moe_layer(preset("debug"))
    options = backend.Options(cache_dir=str(tmp_path))
    lowered = backend.lower(graph, "cpu", tmp_path / "aot", options)
    cache.STATS.clear()
    backend.compile(graph, cpu_device(), options)
    assert dict(cache.STATS) == {"hit": len(lowered["kernels"])}
