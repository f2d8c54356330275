"""Shared helpers: run a training job through torchrun on 127.0.0.1 with a hard timeout (a module of its
own, not conftest.py: every test folder has a conftest, and `from conftest import` picks whichever came first)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from portable_moe.ir.meanings import run_graph
from portable_moe.models import build_model, init_params, preset
from portable_moe.train import TrainConfig, launch
from portable_moe.train.data import global_batch

JOB_TIMEOUT_S = 90
RTOL, ATOL = 1e-4, 1e-6   # fp32 conformance tolerance


def run_job(cfg: TrainConfig, workdir, max_restarts: int = 0) -> launch.RunResult:
    result = launch.run(cfg, workdir, max_restarts=max_restarts, timeout_s=JOB_TIMEOUT_S)
    return result


def ok(result: launch.RunResult) -> launch.RunResult:
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def reference_step0(cfg: TrainConfig) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of the whole global batch in one process through the IR graph on the
    reference backend (the oracle; it shares no code with the expert-parallel path)."""
    mcfg = preset(cfg.model)
    graph = build_model(mcfg, with_loss=True)
    params = {k: v.requires_grad_(v.is_floating_point()) for k, v in init_params(graph, cfg.seed).items()}
    ids, targets = global_batch(cfg.seed, 0, cfg.batch, cfg.seq, mcfg.vocab_size)
    _, loss = run_graph(graph, {"ids": ids, "targets": targets}, params)
    loss.backward()
    return float(loss.detach()), {k: v.grad for k, v in params.items() if v.grad is not None}


def gathered_grads(dump_dir, world: int) -> dict[str, list[torch.Tensor]]:
    """Every rank's dumped gradients; an expert held by several ranks appears once per holder."""
    out: dict[str, list[torch.Tensor]] = {}
    for r in range(world):
        for name, g in load_file(str(dump_dir / f"shard-{r:05d}.safetensors")).items():
            out.setdefault(name, []).append(g)
    return out


def check_against_reference(cfg: TrainConfig, result, dump_dir):
    ref_loss, ref_grads = reference_step0(cfg)
    assert result.steps[0]["loss"] == pytest.approx(ref_loss, rel=RTOL)
    got = gathered_grads(dump_dir, cfg.world)
    for name, ref in ref_grads.items():
        if ".moe.experts." in name:
            for e in range(ref.shape[0]):
                copies = got[f"{name}/{e}"]
                for g in copies:
                    torch.testing.assert_close(g, ref[e], rtol=RTOL, atol=ATOL,
                                               msg=lambda m, n=f"{name}/{e}": f"{n}: {m}")
        else:
            torch.testing.assert_close(got[name][0], ref, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")
