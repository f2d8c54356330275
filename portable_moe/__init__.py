"""portable_moe: one small IR for Mixture-of-Experts models, many accelerator vendors."""

import sys

from .ir import Graph, IRError, PortableMoeError
from .runtime import CompiledModel, compile

__all__ = ["CompiledModel", "Graph", "IRError", "PortableMoeError", "compile", "from_hf", "patch_hf",
           "register_experts"]
__version__ = "0.1.0"


def register_experts() -> None:
    """Registers experts_implementation="portable_moe" in transformers' ExpertsInterface."""
    from .hf.experts import register

    register()


def __getattr__(name):
    if name in ("from_hf", "patch_hf"):      # lazy: importing transformers takes seconds
        from . import hf
        return getattr(hf, name)
    raise AttributeError(f"module 'portable_moe' has no attribute {name!r}")


if "transformers" in sys.modules:            # else register_experts(), or importing portable_moe.hf, does it
    register_experts()
