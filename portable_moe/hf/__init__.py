"""Import Mixture-of-Experts models from Hugging Face transformers (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE,
DeepSeek-V3 MoE blocks) into the IR, or patch a transformers model to run its MoE blocks on our backends."""

from .errors import HFImportError
from .experts import register
from .importer import HFImport, from_hf
from .patch import patch_hf

__all__ = ["HFImport", "HFImportError", "from_hf", "patch_hf", "register"]
