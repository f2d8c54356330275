"""The torch-exported MoE layer, exported once per session (the dynamo exporter takes seconds)."""

from __future__ import annotations

import pytest
import torch
from torch_moe import TorchMoE, export_torch_moe


@pytest.fixture(scope="session")
def torch_moe_file(tmp_path_factory):
    torch.manual_seed(0)
    model = TorchMoE(hidden=32, ffn=48, experts=4, top_k=2).eval()
    path = export_torch_moe(model, tmp_path_factory.mktemp("torch_moe") / "moe.onnx")
    return model, path
