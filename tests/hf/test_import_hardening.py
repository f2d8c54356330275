"""import-hf against hostile inputs and outputs: never overwrites its input or follows a link, refuses
values that would make backends disagree, bounds sizes before allocating, never blocks on a FIFO."""

from __future__ import annotations

import json
import os
import threading

import pytest
from safetensors.torch import load_file, save_file

from portable_moe.cli.main import main


@pytest.fixture
def mixtral_dir(tmp_path, models):
    path = tmp_path / "hf"
    models("mixtral").save_pretrained(path)
    return path


def import_hf(argv, capsys) -> tuple[int, str]:
    code = main(["import-hf", *argv])
    return code, capsys.readouterr().err


def edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_output_equal_to_the_input_is_refused(mixtral_dir, capsys):
    before = (mixtral_dir / "config.json").read_bytes()
    code, err = import_hf([str(mixtral_dir), "-o", str(mixtral_dir)], capsys)
    assert code == 2 and "is the input directory" in err and err.count("\n") == 1
    assert (mixtral_dir / "config.json").read_bytes() == before


def test_a_symlink_in_the_output_is_replaced_not_followed(mixtral_dir, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "graph.json").symlink_to(victim)
    code, _ = import_hf([str(mixtral_dir), "-o", str(out)], capsys)
    assert code == 0 and victim.read_text() == "precious"
    assert not (out / "graph.json").is_symlink() and json.loads((out / "graph.json").read_text())["format"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_an_existing_file_as_output_is_one_line(mixtral_dir, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep")
    code, err = import_hf([str(mixtral_dir), "-o", str(target)], capsys)
    assert code == 2 and "not a directory" in err and err.count("\n") == 1 and target.read_text() == "keep"


@pytest.mark.parametrize("changes,word", [
    ({"rope_parameters": {"rope_theta": float("nan"), "rope_type": "default"}}, "rope_theta"),
    ({"rope_parameters": {"rope_theta": float("-inf"), "rope_type": "default"}}, "rope_theta"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps"), ({"rms_norm_eps": "1e-5"}, "rms_norm_eps"),
    ({"num_hidden_layers": 10**12}, "num_hidden_layers"), ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"hidden_size": "32"}, "hidden_size"), ({"num_local_experts": 8.5}, "num_local_experts"),
    ({"num_experts_per_tok": True}, "num_experts_per_tok"), ({"vocab_size": -3}, "vocab_size"),
])
def test_bad_config_values_are_one_line(mixtral_dir, tmp_path, capsys, changes, word):
    edit_config(mixtral_dir, **changes)
    code, err = import_hf([str(mixtral_dir), "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and word in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_shape_mismatched_experts_are_one_line(tmp_path, models, capsys):
    from test_dir_cli_refusals import legacy_mixtral_dir

    path = tmp_path / "legacy"
    path.mkdir()
    legacy_mixtral_dir(models("mixtral"), path)
    tensors = load_file(str(path / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("experts.3.w1.weight"))
    tensors[name] = tensors[name][:-1].contiguous()
    save_file(tensors, str(path / "model.safetensors"))
    code, err = import_hf([str(path), "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and "experts.3" in err and err.count("\n") == 1


def test_a_fifo_among_the_weights_is_refused_not_waited_on(mixtral_dir, tmp_path, capsys):
    os.mkfifo(mixtral_dir / "zz-extra.safetensors")
    result = {}
    worker = threading.Thread(target=lambda: result.update(code=main(
        ["import-hf", str(mixtral_dir), "-o", str(tmp_path / "out")])), daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():
        with open(mixtral_dir / "zz-extra.safetensors", "wb"):
            pass
        pytest.fail("import-hf blocked on a FIFO")
    assert result["code"] == 2 and "not a regular file" in capsys.readouterr().err
