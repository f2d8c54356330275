"""Checkpoints never lose data silently: checksums verified on load, a damaged newest checkpoint falls
back to the previous intact one, damage is a one-line TrainError (never a SafetensorError, KeyError or
UnicodeDecodeError), a fresh run never replaces checkpoints unless told to, --resume needs one."""

from __future__ import annotations

import json

import pytest
import torch

from portable_moe.train import TrainError, checkpoint


def save(root, step: int, value: float):
    tmp = checkpoint.prepare(root, step)
    checkpoint.write_shard(tmp, 0, {"param/w": torch.full((256,), value)})
    checkpoint.write_shard(tmp, 1, {"param/u": torch.full((4,), value)})
    checkpoint.commit(root, step, {"step": step})
    return checkpoint.step_dir(root, step)


def flip_bits(path, count: int = 8):
    data = bytearray(path.read_bytes())
    for i in range(count):
        data[len(data) - 1 - 7 * i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_index_holds_a_checksum_of_every_shard(tmp_path):
    path = save(tmp_path, 2, 1.0)
    index = json.loads((path / "index.json").read_text())
    assert sorted(index["sha256"]) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert index["sha256"]["shard-00000.safetensors"] == checkpoint.digest(path / "shard-00000.safetensors")


def test_flipped_bits_in_the_newest_shard_fall_back_to_the_previous_checkpoint(tmp_path):
    save(tmp_path, 2, 1.0)
    newest = save(tmp_path, 4, 2.0)
    flip_bits(newest / "shard-00000.safetensors")
    found, index, damaged = checkpoint.newest_intact(tmp_path)
    assert found.name == "step-00000002"
    assert list(damaged) == [newest] and "does not match its checksum" in damaged[newest]
    assert checkpoint.load_tensors(found, index, ["param/w"])["param/w"][0] == 1.0


@pytest.mark.parametrize("damage, words", [
    (b"\xff\xfe\x00garbage", "UnicodeDecodeError"),
    (b"{not json", "JSONDecodeError"),
    (b'{"weight_map": {}}', "lacks meta.step"),
    (b'{"meta": {"step": 4}, "weight_map": {"param/w": "shard-00000.safetensors"}, "sha256": {}}', "no checksum"),
])
def test_a_damaged_index_is_a_one_line_error_and_falls_back(tmp_path, damage, words):
    save(tmp_path, 2, 1.0)
    newest = save(tmp_path, 4, 2.0)
    (newest / "index.json").write_bytes(damage)
    found, _, damaged = checkpoint.newest_intact(tmp_path)
    assert found.name == "step-00000002" and words in damaged[newest]
    with pytest.raises(TrainError, match=words):
        checkpoint.read_index(newest)


def test_nothing_intact_is_a_train_error_naming_each_checkpoint(tmp_path):
    for step in (2, 4):
        flip_bits(save(tmp_path, step, 1.0) / "shard-00001.safetensors")
    with pytest.raises(TrainError, match="no intact checkpoint.*step-00000004.*step-00000002"):
        checkpoint.newest_intact(tmp_path)


def test_a_damaged_shard_header_is_a_train_error_not_a_safetensor_error(tmp_path):
    path = save(tmp_path, 2, 1.0)
    shard = path / "shard-00000.safetensors"
    shard.write_bytes(b"\xff" * 64)
    index = json.loads((path / "index.json").read_text())
    with pytest.raises(TrainError, match="cannot read checkpoint shard .*shard-00000"):
        checkpoint.load_tensors(path, index, ["param/w"])


def test_resume_needs_a_checkpoint_and_a_fresh_run_never_replaces_one(tmp_path):
    root = tmp_path / "ckpt"
    for missing_or_empty in (root, tmp_path):
        with pytest.raises(TrainError, match="--resume: no checkpoint in"):
            checkpoint.check_start(missing_or_empty, resume=True, overwrite=False)
    checkpoint.check_start(root, resume=False, overwrite=False)
    save(root, 12, 1.0)
    with pytest.raises(TrainError, match="already holds checkpoint step-00000012.*--overwrite"):
        checkpoint.check_start(root, resume=False, overwrite=False)
    checkpoint.check_start(root, resume=True, overwrite=False)
    checkpoint.check_start(root, resume=False, overwrite=True)
    checkpoint.clear(root)
    assert checkpoint.committed(root) == [] and not (root / "latest").exists()


def test_pruning_keeps_two_intact_checkpoints_once_damaged_ones_are_set_aside(tmp_path):
    for step in (2, 4, 6):
        save(tmp_path, step, float(step))
    damaged = checkpoint.step_dir(tmp_path, 6)
    flip_bits(damaged / "shard-00000.safetensors")
    found, _, skipped = checkpoint.newest_intact(tmp_path)
    assert found.name == "step-00000004"
    checkpoint.set_aside(list(skipped))
    save(tmp_path, 5, 5.0)
    assert [p.name for p in checkpoint.committed(tmp_path)] == ["step-00000004", "step-00000005"]
    assert (tmp_path / "damaged-step-00000006").is_dir()


def test_a_step_damaged_twice_is_set_aside_twice(tmp_path):
    for _ in range(2):
        flip_bits(save(tmp_path, 6, 1.0) / "shard-00000.safetensors")
        checkpoint.set_aside([checkpoint.step_dir(tmp_path, 6)])
    assert checkpoint.committed(tmp_path) == [] and (tmp_path / "damaged-step-00000006").is_dir()
