"""Run-time backend selection, partitioning with fallback, and the executables users hold."""

from .compile import all_devices, compile, resolve_device
from .module import CompiledModel
from .select import Selection, select

__all__ = ["CompiledModel", "Selection", "all_devices", "compile", "resolve_device", "select"]
