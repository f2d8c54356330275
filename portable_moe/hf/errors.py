"""The error raised for anything the Hugging Face importer does not understand."""

from ..ir import PortableMoeError


class HFImportError(PortableMoeError):
    """An unknown family, attention variant, routing option or weight layout: refused, never imported wrongly."""
