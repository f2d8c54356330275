"""Local directories (transformers' own save_pretrained, and older per-expert layouts), the import-hf CLI,
and the refusals: each names what it does not understand."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from hf_tiny import make_model
from safetensors.torch import save_file

from portable_moe import ir
from portable_moe.cli import import_hf
from portable_moe.hf import HFImportError, from_hf
from portable_moe.models import load_config, load_params


def legacy_mixtral_dir(model, path):
    """Writes Mixtral the way older checkpoints do: block_sparse_moe.experts.N.w1/w3/w2, one tensor per expert."""
    model.config.save_pretrained(path)
    out = {}
    for name, t in model.state_dict().items():
        name = name.replace(".mlp.", ".block_sparse_moe.")
        if name.endswith("experts.gate_up_proj"):
            base = name.removesuffix("gate_up_proj")
            for e, w in enumerate(t):
                out[f"{base}{e}.w1.weight"], out[f"{base}{e}.w3.weight"] = w.chunk(2, dim=0)
        elif name.endswith("experts.down_proj"):
            base = name.removesuffix("down_proj")
            out.update({f"{base}{e}.w2.weight": w.contiguous() for e, w in enumerate(t)})
        else:
            out[name] = t.contiguous()
    save_file({k: v.contiguous() for k, v in out.items()}, str(path / "model.safetensors"))


def test_directory_import_matches_object_import(tmp_path, models):
    model = models("qwen2_moe")
    model.save_pretrained(tmp_path)
    from_dir, from_obj = from_hf(tmp_path), from_hf(model)
    assert from_dir.params.keys() == from_obj.params.keys()
    for k, v in from_obj.params.items():
        assert torch.equal(from_dir.params[k], v), k


def test_legacy_per_expert_layout(tmp_path, models):
    model = models("mixtral")
    legacy_mixtral_dir(model, tmp_path)
    imp = from_hf(tmp_path)
    assert torch.equal(imp.params["layers.1.moe.experts.gate_up"], model.model.layers[1].mlp.experts.gate_up_proj)
    assert torch.equal(imp.params["layers.0.moe.experts.down"], model.model.layers[0].mlp.experts.down_proj)


def test_cli_writes_graph_params_config(tmp_path, models):
    model = models("olmoe")
    model.save_pretrained(tmp_path / "hf")
    parser = argparse.ArgumentParser()
    import_hf.add_parser(parser.add_subparsers())
    args = parser.parse_args(["import-hf", str(tmp_path / "hf"), "-o", str(tmp_path / "out"), "--block-only"])
    assert args.func(args) == 0
    graph = ir.load(tmp_path / "out" / "graph.json")
    params = load_params(tmp_path / "out" / "params.safetensors")
    assert set(graph.param_names()) == set(params)
    assert torch.equal(params["experts.gate_up"], model.model.layers[0].mlp.experts.gate_up_proj)
    assert load_config(tmp_path / "out" / "config.json").experts == 8
    assert json.loads((tmp_path / "out" / "source.json").read_text())["family"] == "olmoe"


def test_refuses_gpt_oss_naming_its_swiglu():
    import transformers as tf

    cfg = tf.GptOssConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=16, num_local_experts=4, vocab_size=64, head_dim=8)
    with pytest.raises(HFImportError, match="clamped SwiGLU"):
        from_hf(tf.GptOssForCausalLM(cfg))


def test_refuses_unknown_family():
    import transformers as tf

    cfg = tf.LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=16,
                         vocab_size=64)
    with pytest.raises(HFImportError, match="unknown transformers model_type 'llama'"):
        from_hf(tf.LlamaForCausalLM(cfg))


@pytest.mark.parametrize("overrides, words", [
    ({"sliding_window": 4}, "sliding_window=4"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}, "rope_type='linear'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
])
def test_refuses_unsupported_options(overrides, words):
    with pytest.raises(HFImportError, match=words.replace("(", r"\(")):
        from_hf(make_model("mixtral", **overrides))


def test_refuses_missing_dir_and_pickles(tmp_path):
    with pytest.raises(HFImportError, match="never downloads"):
        from_hf(tmp_path / "nope")
    make_model("mixtral").config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(HFImportError, match="pickle checkpoints are not read"):
        from_hf(tmp_path)
