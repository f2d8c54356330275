"""portable_moe.runtime.options_for: every backend's Options, filled from the knobs unless the caller
gave the field."""

from pathlib import Path

import pytest

from portable_moe.backends.base import BackendError
from portable_moe.backends.onnxruntime import OnnxRuntimeBackend
from portable_moe.backends.tvm import TVMBackend
from portable_moe.knobs import KnobError
from portable_moe.runtime.compile import options_for


@pytest.fixture
def knobs_set(monkeypatch, tmp_path):
    monkeypatch.setenv("PORTABLE_MOE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PORTABLE_MOE_TVM_THREADS", "3")
    monkeypatch.setenv("PORTABLE_MOE_TVM_TUNE_SECONDS", "0.5")
    monkeypatch.setenv("ROCM_PATH", "/opt/rocm-x")
    return tmp_path


def test_the_knobs_fill_the_backends_fields(knobs_set):
    opts = options_for(TVMBackend())
    assert (opts.threads, opts.tune_seconds, opts.rocm_path) == (3, 0.5, "/opt/rocm-x")
    assert opts.cache_root("tvm") == knobs_set / "tvm"


def test_a_field_the_caller_gave_wins_over_its_knob(knobs_set, tmp_path):
    opts = options_for(TVMBackend(), {"threads": 1, "cache_dir": str(tmp_path / "mine")})
    assert (opts.threads, opts.tune_seconds, Path(opts.cache_dir)) == (1, 0.5, tmp_path / "mine")


def test_one_backends_knob_never_fills_another_backends_field_of_the_same_name(knobs_set):
    opts = options_for(OnnxRuntimeBackend())
    assert opts.threads == 0 and opts.cache_root("onnxruntime") == knobs_set / "onnxruntime"


def test_a_malformed_knob_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv("PORTABLE_MOE_TVM_THREADS", "many")
    with pytest.raises(KnobError, match="PORTABLE_MOE_TVM_THREADS"):
        options_for(TVMBackend())
    assert options_for(OnnxRuntimeBackend()).threads == 0       # only the backend's own knobs are read


def test_an_unknown_option_is_still_refused():
    with pytest.raises(BackendError, match="unknown option"):
        options_for(OnnxRuntimeBackend(), {"tune_seconds": 1})
