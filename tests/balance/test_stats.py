"""LoadStats: exponential and window averages, torch input, shape errors; calibration."""

import numpy as np
import pytest
import torch

from portable_moe.balance import BalanceError, LoadStats, calibrate, calibrate_torch


def test_ema():
    s = LoadStats(2, 3, decay=0.5)
    s.update_all(np.array([[2.0, 0, 0], [0, 0, 4]]))
    s.update(0, torch.tensor([0.0, 2, 0]))
    assert np.allclose(s.loads(), [[1, 1, 0], [0, 0, 4]])


def test_window_mean():
    s = LoadStats(1, 2, window=2)
    for c in ([1.0, 0], [3.0, 0], [5.0, 2]):
        s.update_all(np.array([c]))
    assert np.allclose(s.loads(), [[4.0, 1.0]])
    s2 = LoadStats(2, 2, window=3)
    s2.update(1, np.array([3, 3]))
    assert np.allclose(s2.loads(), [[0, 0], [3, 3]])


def test_bad_shapes():
    s = LoadStats(2, 3)
    with pytest.raises(BalanceError, match="expected \\(3,\\)"):
        s.update(0, np.ones(4))
    with pytest.raises(BalanceError, match="out of range"):
        s.update(5, np.ones(3))
    with pytest.raises(BalanceError, match="expected \\(2, 3\\)"):
        s.update_all(np.ones((3, 3)))


def test_calibrate():
    assert calibrate(lambda: sum(range(100)), tokens=100, repeats=2) > 0
    assert calibrate_torch(hidden=64, ffn=32, tokens=16, repeats=2) > 0
