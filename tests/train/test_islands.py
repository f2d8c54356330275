"""Vendor islands emulated on CPU (cpu@nvidia x2 + cpu@amd x2, a 3 GB/s bridge): the hierarchical
all-reduce and island-local routing both run (the report's counters say so), gradients equal the
single-process reference, and a checkpointed run resumes on the same loss curve."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_equivalence import check_against_reference
from train_jobs import ok, run_job

from portable_moe import balance
from portable_moe.train import TrainConfig, TrainError
from portable_moe.train.islands import island_index, island_names, island_plan, route_tables, split_device
from portable_moe.train.placement import cluster_of

ISLANDS = TrainConfig(devices=("cpu@nvidia", "cpu@nvidia", "cpu@amd", "cpu@amd"), backends=("reference",) * 4,
                      steps=3, batch=4, seq=8, placement="islands", routing="island", bridge_gbps=3.0,
                      z_loss=0.0, checkpoint_every=2)


def test_device_labels_name_islands():
    assert split_device("cpu@amd") == ("cpu", "amd") and split_device("cuda:1") == ("cuda:1", "")
    assert island_names(["cpu@a", "cpu", "cpu@a"]) == ["a", "cpu", "a"]
    assert island_index(["cpu@b", "cpu@a", "cpu@b"]) == [0, 1, 0]
    with pytest.raises(TrainError, match="mixes device kinds"):
        island_names(["cpu@x", "cuda:0@x"])
    with pytest.raises(TrainError, match="DEVICE@ISLAND"):
        split_device("cpu@")


def test_island_plan_keeps_each_islands_tokens_home():
    cfg = ISLANDS.with_(speeds=(1.0, 0.5, 1.0, 1.0))
    cluster = cluster_of(cfg, 2, 8, 1000)
    loads = np.random.default_rng(0).gamma(1.0, size=(2, 8)) + 0.1
    pl = island_plan(loads, cluster, 1000)
    balance.validate_placement(pl, cluster)
    for island, ranks in ((0, [0, 1]), (1, [2, 3])):
        share = route_tables(pl, 4, island, "island")
        assert share[:, :, ranks].sum(-1).numpy() == pytest.approx(np.ones((2, 8)))
        global_share = route_tables(pl, 4, island, "global")
        assert global_share[:, :, ranks].sum() < 2 * 8 * 0.75   # global routing sends tokens across
    # inside island 0 the faster rank takes more of the island's tokens
    rows = route_tables(pl, 4, 0, "island")[:, :, :2].numpy() * loads[:, :, None]
    assert rows[..., 0].sum() > rows[..., 1].sum()
    with pytest.raises(TrainError, match="expert slots"):
        island_plan(np.ones((1, 8)), balance.Cluster(cluster.devices[:1] + cluster.devices[2:]), 4000)


@pytest.fixture(scope="module")
def island_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("islands")
    cfg = ISLANDS.with_(checkpoint=str(work / "ckpt"), dump=str(work / "dump"))
    return cfg, ok(run_job(cfg, work)), work


def test_islands_train_with_hierarchical_all_reduce_and_local_routing(island_run):
    cfg, result, work = island_run
    check_against_reference(cfg, result, work / "dump")
    for step in result.steps:
        assert step["routing"] == "island"
        assert step["hierarchical_all_reduces"] > 0, "the all-reduce did not go island -> bridge -> island"
        assert step["bridge_bytes"] > 0 and step["island_bytes"] > 0, step
        assert step["token_bridge_bytes"] == 0, "island routing sent tokens over the bridge"
        assert len(step["rank_all_to_all_s"]) == 4 and min(step["rank_all_reduce_s"]) > 0
    assert result.losses[-1] < result.losses[0]


def test_global_routing_crosses_the_bridge_with_the_same_maths(island_run, tmp_path):
    cfg, _, _ = island_run
    glob = cfg.with_(routing="global", steps=1, checkpoint="", checkpoint_every=0, dump=str(tmp_path / "dump"))
    result = ok(run_job(glob, tmp_path))
    check_against_reference(glob, result, tmp_path / "dump")
    assert result.steps[0]["token_bridge_bytes"] > 0


def test_islands_resume_from_checkpoint_follows_the_curve(island_run, tmp_path):
    cfg, first, work = island_run
    ckpt = tmp_path / "ckpt"
    shutil.copytree(cfg.checkpoint, ckpt)
    shutil.rmtree(ckpt / "step-00000003")        # the final step is always saved: resume from step 2
    resumed = ok(run_job(cfg.with_(checkpoint=str(ckpt), resume=True, dump=""), tmp_path))
    assert [s["step"] for s in resumed.steps] == [3]
    assert resumed.losses == pytest.approx(first.losses[2:], rel=1e-5)
    assert resumed.steps[0]["token_bridge_bytes"] == 0


def test_replan_and_migration_keep_island_routing_and_the_maths(tmp_path):
    """Even placement has no by_node; the re-plan after step 2 brings one (islands as nodes), migrates experts,
    and from then on island routing keeps more tokens home than global routing, with the same losses."""
    cfg = TrainConfig(devices=("cpu@nvidia", "cpu@amd"), backends=("reference",) * 2, speeds=(1.0, 0.25), steps=4,
                      batch=4, seq=8, placement="even", replan_every=2, max_move_bytes=1 << 30, aux_loss=0.01)
    home = ok(run_job(cfg, tmp_path / "island"))
    away = ok(run_job(cfg.with_(routing="global"), tmp_path / "global"))
    assert sum(s["moved_bytes"] for s in home.steps) > 0, "the re-plan should migrate experts"
    assert home.losses == pytest.approx(away.losses, rel=1e-4)
    before = [(a["token_bridge_bytes"], b["token_bridge_bytes"]) for a, b in zip(home.steps[:2], away.steps[:2])]
    after = [(a["token_bridge_bytes"], b["token_bridge_bytes"]) for a, b in zip(home.steps[2:], away.steps[2:])]
    assert all(x == y for x, y in before), before
    assert all(x < y for x, y in after), after


def test_island_replan_respects_the_move_budget_and_stays_home():
    cluster = cluster_of(ISLANDS, 2, 8, 1000)
    rng = np.random.default_rng(1)
    first = island_plan(np.ones((2, 8)), cluster, 1000)
    again = island_plan(rng.gamma(0.5, size=(2, 8)) + 0.01, cluster, 1000, previous=first, max_move_bytes=2000)
    assert again.moved_bytes <= 2000
    balance.validate_placement(again, cluster)
    assert route_tables(again, 4, 1, "island")[:, :, 2:].sum(-1).numpy() == pytest.approx(np.ones((2, 8)))


def test_progress_line_and_config_show_the_bridge():
    from portable_moe.train.launch import progress_line

    rec = {"step": 0, "loss": 1.0, "tokens_per_s": 10.0, "imbalance": 1.0, "bridge_bytes": 2e6, "island_bytes": 5e6,
           "rank_compute_s": [0.5, 0.4], "rank_all_to_all_s": [0.3, 0.2], "rank_all_reduce_s": [0.2, 0.1]}
    assert progress_line(rec, 4).endswith("bridge 2.00 MB island 5.00 MB a2a 30% allreduce 20%")
    with pytest.raises(TrainError, match="bridge_gbps"):
        TrainConfig(bridge_gbps=-1.0)
    with pytest.raises(TrainError, match="routing"):
        TrainConfig(routing="nearest")
