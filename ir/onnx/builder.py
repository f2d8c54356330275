"""A small helper that appends ONNX nodes and initializers with unique names; the exporter's only
way to write ONNX, so every lowering reads as a short sequence of standard ops."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..types import DType

OPSET = 21
IR_VERSION = 10          # the ONNX IR version that goes with opset 21 (onnxruntime reads it)

ONNX_DTYPES = {
    DType.float64: TensorProto.DOUBLE, DType.float32: TensorProto.FLOAT, DType.float16: TensorProto.FLOAT16,
    DType.bfloat16: TensorProto.BFLOAT16, DType.float8_e4m3fn: TensorProto.FLOAT8E4M3FN,
    DType.float8_e4m3fnuz: TensorProto.FLOAT8E4M3FNUZ, DType.int64: TensorProto.INT64,
    DType.int32: TensorProto.INT32,
}
IR_DTYPES = {v: k for k, v in ONNX_DTYPES.items()}


class OnnxBuilder:
    def __init__(self, prefix: str = ""):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}
        self.prefix = prefix

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}__{self._count}"

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs) -> list[str]:
        outs = [self.fresh(f"{name or op_type}.{i}" if outputs > 1 else (name or op_type)) for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.fresh(op_type), **attrs))
        return outs

    def op1(self, op_type: str, *inputs: str, name: str | None = None, **attrs) -> str:
        return self.op(op_type, *inputs, name=name, **attrs)[0]

    def op_into(self, op_type: str, inputs: list[str], outputs: list[str], **attrs):
        """A node whose outputs have fixed names (the IR's value names)."""
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.fresh(op_type), **attrs))

    def const(self, value, dtype=np.int64) -> str:
        """A small constant as an initializer, shared between uses."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def cast(self, x: str, to: DType) -> str:
        return self.op1("Cast", x, to=ONNX_DTYPES[to])

    def shape_of(self, x: str, start: int | None = None, end: int | None = None) -> str:
        attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
        return self.op1("Shape", x, **attrs)


def value_info(name: str, dtype: DType, shape) -> onnx.ValueInfoProto:
    dims = [d if isinstance(d, int) else str(d) for d in shape]
    return helper.make_tensor_value_info(name, ONNX_DTYPES[dtype], dims)
