"""ONNX interchange: export an IR graph with its parameters to standard ONNX, import ONNX back.

Needs onnx and numpy (onnxruntime only to check imported MoE patterns); never torch."""

from .builder import OPSET
from .export import check, export, save
from .importer import import_model

__all__ = ["OPSET", "check", "export", "import_model", "save"]
