"""Each rank holds its whole model, gradients and optimizer state on its own device (cfg.devices[rank]);
device names are checked before any process starts; GPU workers never run Triton's interpreter."""

from __future__ import annotations

import argparse

import pytest
import torch

from portable_moe.backends.devices import DeviceError
from portable_moe.models import preset
from portable_moe.train import TrainConfig, TrainError, launch
from portable_moe.train.comm import Comm
from portable_moe.train.model import TrainModel, reference_params
from portable_moe.train.optim import NamedAdamW
from portable_moe.train.trainer import Trainer

META = torch.device("meta")


def rank_tensors(model: TrainModel, opt: NamedAdamW) -> dict[str, torch.Tensor]:
    """Every tensor a rank trains with: parameters, gradients, AdamW moments, routing bias."""
    out = {f"param/{n}": p for n, p in model.params().items()}
    out |= {f"grad/{n}": p.grad for n, p in model.params().items() if p.grad is not None}
    out |= {f"m/{n}": t for n, t in opt.m.items()} | {f"v/{n}": t for n, t in opt.v.items()}
    return out | {"score_bias": model.score_bias}


def test_a_rank_model_and_its_optimizer_state_live_on_the_rank_device():
    # meta stands for a GPU: before the fix the model stayed on the CPU while the rank's expert kernels
    # ran on its device ('found at least two devices, cuda:0 and cpu')
    mcfg = preset("debug")
    hosts = torch.zeros(mcfg.layers, mcfg.experts, 2, dtype=torch.bool)
    hosts[:, ::2, 1] = True
    model = TrainModel(mcfg, reference_params(mcfg, 0), hosts, rank=1, device=META)
    opt = NamedAdamW(lr=1e-2)
    for name, p in model.params().items():
        opt.state(name, p)
    tensors = rank_tensors(model, opt)
    assert any(".moe.experts." in n for n in tensors) and "param/embed.weight" in tensors
    assert {n: t.device for n, t in tensors.items() if t.device != META} == {}
    restored = TrainModel.from_tensors(mcfg, 1, META, {n: p.new_zeros(p.shape, device="cpu") for n, p in
                                                       model.dense.items()}, {}, torch.zeros(mcfg.layers, 1))
    assert {n: t.device for n, t in rank_tensors(restored, NamedAdamW(1e-2)).items() if t.device != META} == {}


def test_a_training_step_creates_no_tensor_on_an_implicit_device():
    """A tensor made without a device lands on the default one, the CPU: on a GPU rank that is the bug
    'found at least two devices, cuda:0 and cpu'. With the default device set to meta, every such
    tensor in a step would fail here (routing bookkeeping is made on the host on purpose)."""
    cfg = TrainConfig(devices=("cpu",), backends=("reference",), batch=2, seq=4, steps=1, aux_free_rate=1e-3)
    trainer = Trainer(cfg, Comm(0, list(cfg.devices), cfg.bridge, {}, 10.0))
    torch.set_default_device(META)
    try:
        rec = trainer.step(0)
    finally:
        torch.set_default_device(None)
    assert rec.step == 1 and rec.loss > 0
    wrong = {n: t.device for n, t in rank_tensors(trainer.model, trainer.opt).items() if t.device != trainer.device}
    assert wrong == {} and trainer.device == torch.device("cpu")


def test_device_names_mean_index_zero_alone():
    cfg = TrainConfig(devices=("cuda", "cpu:0", "rocm:1"), backends=("triton", "reference", "triton"), batch=6)
    assert cfg.devices == ("cuda:0", "cpu", "rocm:1")


def test_workers_do_not_run_triton_interpreted(monkeypatch):
    """TRITON_INTERPRET=1 for every worker made a GPU rank run Triton's interpreter; the backend
    interprets CPU tensors by itself."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET" not in launch.environment()


def cli(argv, tmp_path):
    from portable_moe.cli import train as cli_train

    parser = argparse.ArgumentParser()
    cli_train.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", *argv, "--report", str(tmp_path / "report")])
    return args.func(args)


def absent_gpu() -> str:
    return f"cuda:{torch.cuda.device_count()}"


def test_a_device_not_on_this_machine_is_refused_before_any_process_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "run", lambda *a, **k: pytest.fail("a job was launched"))
    with pytest.raises(DeviceError, match=f"no device '{absent_gpu()}' on this machine"):
        cli(["--nproc", "2", "--devices", f"cpu,{absent_gpu()}"], tmp_path)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("n", ["0", "-1"])
def test_nproc_below_one_names_the_option(tmp_path, n):
    with pytest.raises(TrainError, match=f"--nproc {n}"):
        cli(["--nproc", n], tmp_path)


def test_print_command_leaves_the_previous_runs_config_alone(tmp_path, capsys):
    previous = tmp_path / "report" / "train_config.json"
    previous.parent.mkdir()
    previous.write_text('{"steps": 50}')
    assert cli(["--nproc", "2", "--steps", "3", "--print-command"], tmp_path) == 0
    assert previous.read_text() == '{"steps": 50}'
    assert "command_config.json" in capsys.readouterr().out
