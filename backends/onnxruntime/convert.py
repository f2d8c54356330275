"""numpy -> torch at the backend boundary (torch -> numpy is ir.arrays.to_numpy), and the weights' identity."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


def to_torch(a: np.ndarray, device: str) -> torch.Tensor:
    # not np.ascontiguousarray: it turns a 0-d result (a mean loss) into shape [1]
    t = torch.from_numpy(a if a.flags.c_contiguous else a.copy())
    if t.numel() == 0:       # from_numpy gives empty tensors zero strides, which dtype views reject
        t = torch.empty(t.shape, dtype=t.dtype)
    return t.to(device)


def param_key(params: Mapping, names: list[str]) -> tuple:
    """Identity, storage and in-place version of every parameter: a new key means the weights changed
    (`p.data = ...` swaps the storage without bumping the version)."""
    return tuple((n, id(params[n]), params[n].data_ptr(), params[n]._version) for n in names)
