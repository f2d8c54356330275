"""The reference MoE layer against the independent torch eager baseline (portable_moe.bench.eager, written
the way Hugging Face writes it: a loop over experts with masks), for both router families."""

import pytest
import torch

from portable_moe.bench.eager import eager_loop, route
from portable_moe.ir.meanings import TORCH_DTYPES, run_graph
from portable_moe.models import build_moe_layer, init_params, preset
from portable_moe.runtime.tolerance import global_error


def plain_moe(x, p, cfg):
    """The torch eager baseline (written independently of the IR's meanings): (output, expert indices)."""
    return eager_loop(cfg, p, x), route(cfg, p, x)[1]


def layer(name, dtype="float64", **changes):
    cfg = preset(name).with_(dtype=dtype, **changes)
    graph = build_moe_layer(cfg)
    params = init_params(graph, seed=3, std=0.2)
    if cfg.score_bias:
        params["router.score_bias"] = torch.linspace(-0.05, 0.05, cfg.experts)
    return cfg, graph, params


@pytest.mark.parametrize("name", ["debug", "debug-deepseek"])
@pytest.mark.parametrize("tokens", [1, 3, 37])
def test_float64_matches_to_1e12(name, tokens):
    cfg, graph, params = layer(name)
    x = torch.randn(tokens, cfg.hidden, dtype=torch.float64, generator=torch.Generator().manual_seed(tokens))
    got, = run_graph(graph, {"x": x}, params)
    want, _ = plain_moe(x, params, cfg)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["debug", "debug-deepseek"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_low_precision_within_tolerance(name, dtype):
    cfg, graph, params = layer(name, dtype)
    x = torch.randn(16, cfg.hidden, generator=torch.Generator().manual_seed(0)).to(TORCH_DTYPES[dtype])
    got, = run_graph(graph, {"x": x}, params)
    want, _ = plain_moe(x.double(), {k: v.double() for k, v in params.items()}, cfg.with_(dtype="float64"))
    if dtype == "float32":
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    else:   # bfloat16 rounds every activation; a near-tie may flip one routing choice: judge globally
        assert global_error(got, want) < 1e-3


def test_experts_without_tokens_and_all_tokens_on_one_expert():
    cfg, graph, params = layer("debug", top_k=1)
    params["router.weight"] = torch.zeros_like(params["router.weight"])
    params["router.weight"][5] = 1.0
    x = torch.rand(9, cfg.hidden, dtype=torch.float64) + 0.1          # every token prefers expert 5
    env = {}
    got, = run_graph(graph, {"x": x}, params, env)
    assert env["dispatch.offsets"].tolist() == [0] * 6 + [9] * 3     # experts 0-4 and 6-7 get nothing
    want, idx = plain_moe(x, params, cfg)
    assert (idx == 5).all()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_ties_go_to_the_lower_expert_index():
    cfg, graph, params = layer("debug")
    params["router.weight"] = torch.zeros_like(params["router.weight"])   # every score ties
    env = {}
    run_graph(graph, {"x": torch.randn(4, cfg.hidden, dtype=torch.float64)}, params, env)
    assert env["router.indices"].tolist() == [[0, 1]] * 4


def test_dispatch_is_a_stable_sort_of_token_major_pairs():
    cfg, graph, params = layer("debug")
    env = {}
    run_graph(graph, {"x": torch.randn(11, cfg.hidden, dtype=torch.float64)}, params, env)
    order, experts = env["dispatch.order"], env["router.indices"].reshape(-1)
    assert torch.equal(experts[order], experts[order].sort(stable=True).values)
    for e in range(cfg.experts):
        seg = order[env["dispatch.offsets"][e]:env["dispatch.offsets"][e + 1]]
        assert torch.all(seg[1:] > seg[:-1])
