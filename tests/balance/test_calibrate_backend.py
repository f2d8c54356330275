"""Calibration measures the expert FFN on the backend selected for a device."""

import math

import pytest

from portable_moe.balance import calibrate_backend
from portable_moe.registry import RegistryError


@pytest.mark.parametrize("backend", ["reference", "tvm"])
def test_backend_throughput_is_measured(backend):
    rate = calibrate_backend("cpu", backend, hidden=64, ffn=32, tokens=64, repeats=2)
    assert math.isfinite(rate) and rate > 1000          # tokens/s: far above 1k even for a slow backend


def test_unknown_backend_is_named():
    with pytest.raises(RegistryError, match="unknown backend 'nope'"):
        calibrate_backend("cpu", "nope", hidden=8, ffn=4, tokens=4)
