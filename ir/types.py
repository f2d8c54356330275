"""Tensor types of the IR: a dtype and a shape whose dims are sizes or symbols (`tokens`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum

from .errors import IRError


class DType(str, Enum):
    """Element types. fp8 e4m3fn (OCP: NVIDIA Hopper/Blackwell, AMD CDNA4) and e4m3fnuz (AMD CDNA3)
    are different formats with different ranges, so they are different dtypes."""

    float64 = "float64"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    float8_e4m3fn = "float8_e4m3fn"
    float8_e4m3fnuz = "float8_e4m3fnuz"
    int64 = "int64"
    int32 = "int32"

    @property
    def is_float(self) -> bool:
        return not self.value.startswith("int")


FLOATS = frozenset(d for d in DType if d.is_float)
INTS = frozenset({DType.int64, DType.int32})
COMPUTE_FLOATS = (DType.float32, DType.float16, DType.bfloat16, DType.float64)

Dim = int | str
MAX_DIM = 2**31 - 1          # any one dimension (a vocabulary, a width, an expert count)
MAX_ELEMENTS = 2**40         # any one tensor with every dimension known
SYMBOL = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+)(?:\*(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$")


def parse_dtype(name: str) -> DType:
    try:
        return DType(name)
    except ValueError:
        raise IRError(f"unknown dtype '{name}'; known: {', '.join(d.value for d in DType)}") from None


def dim_product(*dims: Dim) -> Dim:
    """The product of dims: an int when all are known, else a canonical `a*b` symbol."""
    known, symbols = 1, []
    for d in dims:
        if isinstance(d, int):
            known *= d
        else:
            symbols.extend(d.split("*"))
    if not symbols or known == 0:
        return known
    parts = ([str(known)] if known != 1 else []) + sorted(symbols)
    return "*".join(parts)


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: tuple[Dim, ...]

    def __post_init__(self):
        for d in self.shape:
            if isinstance(d, bool) or not isinstance(d, int | str):
                raise IRError(f"dim {d!r} must be a non-negative int or a symbol name"[:120])
            if isinstance(d, int) and not 0 <= d <= MAX_DIM:
                raise IRError(f"dim {d if abs(d) < 10**15 else f'~1e{len(str(abs(d))) - 1}'} is out of range "
                              f"0..{MAX_DIM}")
            if isinstance(d, str) and not SYMBOL.match(d):
                raise IRError(f"dim {d[:40]!r} is not a symbol name (letters, digits, _; products as a*b)")
        known = [d for d in self.shape if isinstance(d, int)]
        if math.prod(known) > MAX_ELEMENTS:
            raise IRError(f"shape {list(self.shape)} holds more than {MAX_ELEMENTS} elements")

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_shape(self, shape) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def __str__(self) -> str:
        return f"{self.dtype.value}[{', '.join(str(d) for d in self.shape)}]"
