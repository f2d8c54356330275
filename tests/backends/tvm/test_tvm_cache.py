"""The on-disk compile cache: a second compile loads instead of compiling; a corrupt entry is rebuilt."""

from __future__ import annotations

import torch
from tvm_helpers import assert_matches, reference64

from portable_moe.backends.tvm import cache
from portable_moe.models import build_moe_layer, init_params, preset


def test_second_compile_hits_and_corrupt_entry_is_rebuilt(backend, tmp_path):
    from portable_moe.backends.devices import cpu_device

    graph = build_moe_layer(preset("debug"))
    params = init_params(graph, 0)
    options = backend.Options(cache_dir=str(tmp_path))
    cache.STATS.clear()
    backend.compile(graph, cpu_device(), options)
    first = dict(cache.STATS)
    assert first.get("miss", 0) >= 5 and not first.get("hit")
    libraries = sorted(tmp_path.glob("*.so"))
    assert len(libraries) == first["miss"]
    assert all(p.with_suffix(".so.sha256").exists() for p in libraries)

    cache.STATS.clear()
    backend.compile(graph, cpu_device(), options)
    assert dict(cache.STATS) == {"hit": first["miss"]}

    victim = libraries[0]
    # a new file in its place (writing into a library this process has mapped would crash it)
    broken = tmp_path / "broken"
    broken.write_bytes(b"\x7fELF not a library" + victim.read_bytes()[64:])
    broken.replace(victim)
    cache.STATS.clear()
    exe = backend.compile(graph, cpu_device(), options)
    assert cache.STATS["corrupt"] == 1
    assert cache.sha256_file(victim) == victim.with_suffix(".so.sha256").read_text().strip()
    x = {"x": torch.randn(9, 64)}
    assert_matches(exe.run(x, params), reference64(graph, x, params))


def test_key_changes_with_target_and_spec():
    a = cache.entry_key({"op": "swiglu", "F": 8}, "llvm")
    assert a == cache.entry_key({"op": "swiglu", "F": 8}, "llvm")
    assert a != cache.entry_key({"op": "swiglu", "F": 16}, "llvm")
    assert a != cache.entry_key({"op": "swiglu", "F": 8}, "opencl")
