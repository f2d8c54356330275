"""The MoE IR: types, op schemas, graphs, the verifier, the printer and the JSON form."""

from .errors import IRError, PortableMoeError
from .graph import Graph, GraphBuilder, Node, Value
from .ops import ALL_OPS, MOE_OPS, SCHEMAS, OpSchema, schema
from .printer import to_text
from .serialize import from_dict, from_json, load, parse_json, read_bounded, save, to_dict, to_json
from .types import COMPUTE_FLOATS, DType, TensorType, dim_product
from .verify import verify

__all__ = [
    "ALL_OPS", "COMPUTE_FLOATS", "DType", "Graph", "GraphBuilder", "IRError", "MOE_OPS", "Node", "OpSchema",
    "PortableMoeError", "SCHEMAS", "TensorType", "Value", "dim_product", "from_dict", "from_json", "load",
    "parse_json", "read_bounded", "save", "schema", "to_dict", "to_json", "to_text", "verify",
]
