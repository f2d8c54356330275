"""torch tensors as numpy arrays, bit for bit: what ONNX export and the ONNX Runtime backend hand over
(the ONNX exporter itself never imports torch)."""

from __future__ import annotations

import numpy as np
import torch


def ml_dtype(dtype: torch.dtype):
    """numpy has no bfloat16/fp8; ml_dtypes (an onnx dependency) supplies them, viewed bit for bit."""
    import ml_dtypes
    return {torch.bfloat16: (torch.int16, ml_dtypes.bfloat16),
            torch.float8_e4m3fn: (torch.uint8, ml_dtypes.float8_e4m3fn),
            torch.float8_e4m3fnuz: (torch.uint8, ml_dtypes.float8_e4m3fnuz)}.get(dtype)


def to_numpy(t) -> np.ndarray:
    if not isinstance(t, torch.Tensor):
        return np.asarray(t)
    t = t.detach().cpu().contiguous()
    if (bits := ml_dtype(t.dtype)) is not None:
        return t.view(bits[0]).numpy().view(bits[1])
    return t.numpy()
