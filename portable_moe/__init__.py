"""portable_moe: one small IR for Mixture-of-Experts models, many accelerator vendors."""

from .ir import Graph, IRError, PortableMoeError
from .runtime import CompiledModel, compile

__all__ = ["CompiledModel", "Graph", "IRError", "PortableMoeError", "compile", "from_hf", "patch_hf"]
__version__ = "0.1.0"


def __getattr__(name):
    if name in ("from_hf", "patch_hf"):      # lazy: importing transformers takes seconds
        from . import hf
        return getattr(hf, name)
    raise AttributeError(f"module 'portable_moe' has no attribute {name!r}")
