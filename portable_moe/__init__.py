"""portable_moe: one small IR for Mixture-of-Experts models, many accelerator vendors."""

from .ir import Graph, IRError, PortableMoeError
from .runtime import CompiledModel, compile

__all__ = ["CompiledModel", "Graph", "IRError", "PortableMoeError", "compile"]
__version__ = "0.1.0"
