"""Shared fixtures: one TVM backend and a compile cache in a session tmp dir (compiles cost seconds)."""

from __future__ import annotations

import pytest

from portable_moe.backends.devices import cpu_device


@pytest.fixture(scope="session")
def backend():
    from portable_moe.backends.tvm import TVMBackend

    return TVMBackend()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tvm-cache")


@pytest.fixture(scope="session")
def compile_cpu(backend, cache_dir):
    def compile_(graph, **options):
        return backend.compile(graph, cpu_device(), backend.Options(cache_dir=str(cache_dir), **options))

    return compile_
