"""Where CPU tiles come from: the register model (vector width, registers, L2), the shipped table,
this machine's first-use tuning (bounded, cached), and damaged tables (ignored, rewritten)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from portable_moe.backends.tuned import TunedTable
from portable_moe.backends.tvm import TVMOptions, tuning
from portable_moe.backends.tvm.kernels.gemm import CpuTile
from portable_moe.backends.tvm.lower import Host

AVX2 = Host("znver2", 8, 16, 512 << 10)
AVX512 = Host("skylake-avx512", 16, 32, 1 << 20)


@pytest.fixture
def fake_host(monkeypatch):
    def use(h):
        monkeypatch.setattr(tuning, "host", lambda: h)
    return use


def registers_used(tile: CpuTile, lanes: int, swiglu: bool) -> int:
    s, nv = (2 if swiglu else 1), tile.NB // lanes
    return tile.MT * nv * s + nv * s + 1


@pytest.mark.parametrize("h,swiglu,want", [(AVX2, True, (6, 8)), (AVX2, False, (6, 16)),
                                           (AVX512, True, (6, 32)), (AVX512, False, (6, 64))])
def test_register_model_fills_the_registers_of_each_vector_width(fake_host, h, swiglu, want):
    fake_host(h)
    tiles = tuning.candidates(2816, 1024, swiglu)
    assert (tiles[0].MT, tiles[0].NB) == want
    assert all(registers_used(t, h.lanes, swiglu) <= h.registers for t in tiles)
    s = 2 if swiglu else 1
    assert tiles[0].NC * 1024 * tiles[0].NB * 4 * s <= h.l2_bytes // 2 or tiles[0].NC == 1


def test_small_gemms_and_a_zero_budget_use_the_model(tmp_path):
    small = tuning.tile_for("grouped_matmul", 8, 64, 64, True, TVMOptions(cache_dir=str(tmp_path)))
    assert small == (tuning.candidates(64, 64, True)[0], "register model")
    big = tuning.tile_for("linear", 1, 2048, 1024, False, TVMOptions(cache_dir=str(tmp_path), tune_seconds=0))
    assert big[1] == "register model" and not (tmp_path / "tuned-cpu.json").exists()


def test_first_use_tuning_is_bounded_saved_and_reused(tmp_path, capsys, monkeypatch):
    options = TVMOptions(cache_dir=str(tmp_path), tune_seconds=0.001)
    tile, source = tuning.tile_for("linear", 1, 1024, 1024, False, options)
    assert source == "tuned here" and tile == tuning.candidates(1024, 1024, False)[0]   # budget: one tile
    assert "tuning grouped_matmul 1x1024x1024" in capsys.readouterr().err
    saved = json.loads((tmp_path / "tuned-cpu.json").read_text())["entries"]
    assert list(saved) == [tuning.shape_key("linear", 1024, 1024, False)] and saved[next(iter(saved))]["gflops"] > 0
    monkeypatch.setattr(tuning, "runner", lambda *a: pytest.fail("measured again"))
    assert tuning.tile_for("linear", 1, 1000, 1000, False, options) == (tile, "tuned here")   # same bucket


def test_shipped_table_wins_and_a_damaged_table_is_ignored(tmp_path, monkeypatch):
    key = tuning.shape_key("grouped_matmul", 2816, 1024, True)
    shipped = tmp_path / "cpu.json"
    shipped.write_text(json.dumps({"entries": {key: {"tile": {"MT": 4, "NB": 8, "NC": 2}}}}))
    monkeypatch.setattr(tuning, "SHIPPED", shipped)
    options = TVMOptions(cache_dir=str(tmp_path), tune_seconds=0)
    assert tuning.tile_for("grouped_matmul", 16, 2816, 1024, True, options) == (CpuTile(4, 8, 2), "shipped table")
    assert tuning.tile_for("grouped_matmul", 16, 2816, 1024, True, TVMOptions(use_tuned=False))[1] == "register model"
    shipped.write_text("{not json")
    (tmp_path / "tuned-cpu.json").write_text('{"entries": {"x": 1}}')
    assert tuning.tile_for("grouped_matmul", 16, 2816, 1024, True, options)[1] == "register model"


def test_devices_line_says_whether_this_cpu_is_tuned_and_from_where(tmp_path, monkeypatch, fake_host):
    from portable_moe.backends.devices import cpu_device
    from portable_moe.backends.tvm import TVMBackend
    from portable_moe.runtime.compile import options_for

    fake_host(AVX2)
    monkeypatch.setenv("PORTABLE_MOE_CACHE_DIR", str(tmp_path))

    def line():
        return TVMBackend().schedule(cpu_device(), options_for(TVMBackend()))

    monkeypatch.setattr(tuning, "SHIPPED", tmp_path / "none.json")
    assert "znver2" in line() and "not tuned" in line()
    TunedTable(tmp_path / "tvm" / "tuned-cpu.json", tuning.FORMAT, tuning.VERSION).put(
        tuning.shape_key("linear", 64, 64, False), {"tile": asdict(CpuTile())})
    assert "tuned here" in line()
    monkeypatch.setattr(tuning, "SHIPPED", tmp_path / "tvm" / "tuned-cpu.json")
    assert "shipped table" in line()


def test_plain_backend_options_become_tvm_options_keeping_the_shared_fields(tmp_path):
    from portable_moe.backends.base import BackendOptions

    opts = TVMOptions.of(BackendOptions(cache_dir=str(tmp_path)))
    assert isinstance(opts, TVMOptions) and opts.cache_dir == str(tmp_path) and opts.tune_seconds == 30.0
    mine = TVMOptions(tune_seconds=1)
    assert TVMOptions.of(mine) is mine
