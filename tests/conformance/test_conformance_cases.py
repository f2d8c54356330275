"""The cases cover every op of the IR, are reproducible from their seed, and hold the MoE edge cases;
the routing analysis excludes near ties and keeps exact ones; unwritten memory reads as NaN."""

import torch

from portable_moe.conformance.cases import CASES
from portable_moe.conformance.checks import poisoned_memory
from portable_moe.conformance.routing import router_ambiguity
from portable_moe.conformance.sample import SCALES
from portable_moe.ir import ALL_OPS, DType


def test_every_op_and_model_preset_has_a_case():
    assert ALL_OPS <= set(CASES)
    assert {"layer:debug", "layer:debug-deepseek", "model:debug", "model:debug-deepseek"} <= set(CASES)


def test_samples_are_reproducible_and_rounded_to_their_dtype():
    a = CASES["grouped_matmul"].generate(DType.bfloat16, SCALES["quick"], 5)
    b = CASES["grouped_matmul"].generate(DType.bfloat16, SCALES["quick"], 5)
    c = CASES["grouped_matmul"].generate(DType.bfloat16, SCALES["quick"], 6)
    assert [s.seed for s in a] == [s.seed for s in b] != [s.seed for s in c]
    assert all(torch.allclose(x.tensors["x"], y.tensors["x"], rtol=0, atol=0, equal_nan=True) for x, y in zip(a, b))
    x = a[0].tensors["x"]
    assert x.dtype == torch.float64 and torch.equal(x, x.bfloat16().double())


def test_edge_cases_are_there():
    router = {s.name for s in CASES["router"].generate(DType.float32, SCALES["tiny"], 0)}
    assert {"softmax:edge:zero-tokens", "softmax:edge:ties-all", "softmax:edge:all-to-one-expert",
            "softmax:edge:nan", "softmax:edge:large", "softmax:edge:non-contiguous"} <= router
    gm = {s.name: s for s in CASES["grouped_matmul"].generate(DType.float32, SCALES["quick"], 0)}
    offsets = gm["edge:empty-experts"].tensors["offsets"]
    assert (offsets.diff() == 0).sum() >= 3
    strided = gm["edge:non-contiguous"].for_backend()[0]["x"]
    assert not strided.is_contiguous()
    assert torch.isnan(gm["edge:nan"].tensors["x"]).any() and gm["edge:nan"].special


def router_env(w):
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sample = CASES["router"].generate(DType.float32, SCALES["tiny"], 0)[0]
    node = sample.graph.nodes[0]
    return sample.graph, {node.inputs[0]: x, node.inputs[1]: w} | ({} if node.inputs[2] is None else
                                                                  {node.inputs[2]: torch.zeros(w.shape[0])})


def test_exact_ties_are_kept_and_near_ties_excluded():
    w = torch.randn(4, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    graph, env = router_env(torch.zeros(4, 16, dtype=torch.float64))
    env[graph.nodes[0].inputs[0]] = torch.randn(6, 16, dtype=torch.float64)
    amb, _ = router_ambiguity(graph, env, DType.float32)["router"]
    assert not amb.any()                          # all scores tie exactly: the lower-index rule decides
    near = w.clone()
    near[1] = near[0] * (1 + 1e-9)                # experts 0 and 1 differ below float32's resolution
    env[graph.nodes[0].inputs[1]] = near
    amb, _ = router_ambiguity(graph, env, DType.float32)["router"]
    scores = env[graph.nodes[0].inputs[0]] @ near.T
    rank = scores.argsort(-1, descending=True).argsort(-1)      # position of each expert, best first
    decides = rank[:, :2].max(-1).values <= 2                    # the pair sits at picks (0,1) or (1,2), top_k=2
    assert amb[decides].all() and not amb[~decides].any() and decides.any()


def test_poisoned_memory_makes_unwritten_elements_nan():
    with poisoned_memory():
        assert torch.isnan(torch.empty(64)).all()
    assert not torch.are_deterministic_algorithms_enabled()
