"""torch <-> numpy at the backend boundary (the ONNX exporter itself never imports torch)."""

from __future__ import annotations

from collections.abc import Mapping

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


def to_torch(a: np.ndarray, device: str) -> torch.Tensor:
    # not np.ascontiguousarray: it turns a 0-d result (a mean loss) into shape [1]
    t = torch.from_numpy(a if a.flags.c_contiguous else a.copy())
    if t.numel() == 0:       # from_numpy gives empty tensors zero strides, which dtype views reject
        t = torch.empty(t.shape, dtype=t.dtype)
    return t.to(device)


def param_key(params: Mapping, names: list[str]) -> tuple:
    """Identity and in-place version of every parameter: a new key means the weights changed."""
    return tuple((n, id(params[n]), getattr(params[n], "_version", 0)) for n in names)
