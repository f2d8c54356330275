"""portable_moe: one small IR for Mixture-of-Experts models, many accelerator vendors."""

import sys
from importlib import metadata

from .ir import Graph, IRError, PortableMoeError

__all__ = ["CompiledModel", "Graph", "IRError", "PortableMoeError", "compile", "from_hf", "patch_hf",
           "register_experts"]
try:
    __version__ = metadata.version("portable-moe")
except metadata.PackageNotFoundError:      # a source tree that was never installed
    __version__ = "0+unknown"

# Lazy: torch takes a second to import and transformers several, and `portable-moe --help` needs neither.
_LAZY = {"compile": "runtime", "CompiledModel": "runtime", "from_hf": "hf", "patch_hf": "hf"}


def register_experts() -> None:
    """Registers experts_implementation="portable_moe" in transformers' ExpertsInterface."""
    from .hf.experts import register

    register()


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'portable_moe' has no attribute {name!r}")


if "transformers" in sys.modules:            # imported after transformers: register now; else call register_experts()
    register_experts()
