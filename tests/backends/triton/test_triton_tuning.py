"""Tuning tunes what is launched: fused variants are their own keys, configs over the device's shared
memory or registers are never timed, a config that failed is never stored (a fake device limit, no GPU)."""

from portable_moe.backends.triton import tuning
from portable_moe.backends.triton.tuning import GemmConfig, Limits, TuningCache

H200 = Limits(232448)


def test_the_fused_swiglu_tile_that_broke_on_the_h200_does_not_fit_it():
    big = GemmConfig(128, 256, 64, 8, 3)
    assert not tuning.fits(big, "swiglu", 2, Limits(245760 - 1, 10**6))       # 245,760 B: what the H200 refused
    assert tuning.fits(big, "swiglu", 2, Limits(245760, 10**6))
    assert not tuning.fits(big, "swiglu", 2, H200) and tuning.fits(big, "plain", 2, H200)


def test_defaults_shrink_to_the_device(tmp_path):
    small = Limits(64 * 1024)
    for variant in ("plain", "swiglu", "swiglu+gather"):
        for rows in (1, 40, 5000):
            cfg, note = TuningCache(tmp_path).get("sm_90", variant, "bfloat16", 4096, 7168, rows, small)
            assert note and tuning.fits(cfg, variant, 2, small), (variant, rows, cfg)


def test_autotune_times_only_what_fits_and_stores_only_what_ran(tmp_path):
    limits = Limits(100 * 1024)
    timed = []

    def timer(fn):
        cfg = fn()
        timed.append(cfg)
        if cfg.block_m == 16:
            raise RuntimeError("out of resources")       # as a launch that fails on the device
        return 1.0 / cfg.block_n

    cache = TuningCache(tmp_path)
    best = tuning.autotune(cache, "sm_90", "swiglu", "bfloat16", 4096, 7168, 300, lambda c: c, limits, timer=timer)
    assert timed and all(tuning.fits(c, "swiglu", 2, limits) for c in timed)
    assert len(timed) < len(tuning.CANDIDATES) and best.block_m != 16
    assert TuningCache(tmp_path).get("sm_90", "swiglu", "bfloat16", 4096, 7168, 300, limits) == (best, None)
    assert TuningCache(tmp_path).get("sm_90", "plain", "bfloat16", 4096, 7168, 300, limits)[1]   # not this key

    def failing(fn):
        raise RuntimeError("out of resources")

    assert tuning.autotune(cache, "sm_90", "plain", "float16", 64, 64, 300, lambda c: c, limits, timer=failing) is None
    assert TuningCache(tmp_path).get("sm_90", "plain", "float16", 64, 64, 300, limits)[1]         # nothing stored
