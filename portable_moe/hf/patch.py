"""patch_hf: replaces each MoE block of a transformers model, in place, by our compiled executable.

The wrapper keeps the block's own submodules (gate, experts, shared expert) under their old names, and the
compiled module uses the very same Parameter objects, so state_dict keys, optimizers over
model.parameters(), generate() and training loops keep working. Legend: B batch, S sequence, H hidden."""

from __future__ import annotations

import torch

from ..runtime.module import safe_name
from .errors import HFImportError
from .families import Family, family_of, moe_config
from .graph import block_graph


def returns_tuple(block: torch.nn.Module, hidden: int, like: torch.Tensor) -> bool:
    """Whether this transformers version's block returns (hidden, router_logits) or the hidden states alone."""
    was_training = block.training
    block.eval()
    try:
        with torch.no_grad():
            out = block(torch.zeros(1, 1, hidden, dtype=like.dtype, device=like.device))
    finally:
        block.train(was_training)
    return isinstance(out, tuple)


class PatchedMoE(torch.nn.Module):
    """Drop-in for one transformers MoE block: hidden_states [B, S, H] -> what the original block returned."""

    def __init__(self, block: torch.nn.Module, fam: Family, hf_cfg, backend: str | None, device: str | None):
        super().__init__()
        from ..runtime import compile

        for name, child in block.named_children():
            self.add_module(name, child)
        tensors = dict(block.state_dict(keep_vars=True))
        gate_up = tensors.get("experts.gate_up_proj")
        if gate_up is None:
            raise HFImportError(f"{type(block).__name__} has no experts.gate_up_proj (not a transformers 5.x block)")
        self.dtype_name = str(gate_up.dtype).removeprefix("torch.")
        cfg = moe_config(fam, hf_cfg, self.dtype_name, block_only=True)
        self.hidden, self.with_logits = cfg.hidden, returns_tuple(block, cfg.hidden, gate_up)
        self.score_bias = fam.score_bias
        graph, names = block_graph(tensors, cfg, fam, "", with_logits=self.with_logits,
                                   score_bias_input=fam.score_bias is not None)
        compiled = compile(graph, {ir: tensors[hf].detach() for ir, hf in names.items()}, device=device,
                           backend=backend)
        for ir, hf in names.items():
            if not isinstance(tensors[hf], torch.nn.Parameter):
                raise HFImportError(f"'{hf}' of {type(block).__name__} is not a Parameter; cannot share it")
            setattr(compiled, safe_name(ir), tensors[hf])      # share the Parameter object itself
        self.__dict__["compiled"] = compiled                  # outside the module tree: no duplicate names

    def forward(self, hidden_states: torch.Tensor):
        lead = hidden_states.shape[:-1]
        args = [hidden_states.reshape(-1, self.hidden)]
        if self.score_bias:
            args.append(self.get_buffer(self.score_bias).float())
        out = self.compiled(*args)
        y, logits = (out[0], out[1]) if self.with_logits else (out, None)
        y = y.reshape(*lead, self.hidden)
        return (y, logits.to(y.dtype)) if self.with_logits else y


def patch_hf(model: torch.nn.Module, backend: str | None = None, device: str | None = None) -> list[str]:
    """Replaces every MoE block of `model` in place; returns the names of the replaced modules.
    Patch after moving the model to its device and dtype: the executables are compiled for those."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise HFImportError(f"expected a transformers model, got {type(model).__name__}")
    fam = family_of(cfg)
    if getattr(cfg, "router_jitter_noise", 0.0):
        raise HFImportError(f"{fam.name}: router_jitter_noise={cfg.router_jitter_noise} (multiplicative noise in "
                            f"training) is not expressed by our router; set it to 0 to patch")
    blocks = [(n, m) for n, m in model.named_modules() if type(m).__name__ in fam.block_classes]
    if not blocks:
        raise HFImportError(f"no {'/'.join(fam.block_classes)} module found in {type(model).__name__}")
    for name, block in blocks:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, PatchedMoE(block, fam, cfg, backend, device))
    return [n for n, _ in blocks]
