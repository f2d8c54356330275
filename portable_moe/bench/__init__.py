"""The benchmark home, reached from `portable-moe bench`: the torch eager MoE baselines (eager.py), one
MoE layer's forward on every backend beside them (layer.py), the expert placement benchmark (balance.py)
and expert-parallel training efficiency (train.py), all timed by the one timer (portable_moe/timing.py)."""

from .layer import (
    DEFAULT_SHAPES,
    EAGER,
    SLOW,
    BenchError,
    Case,
    flagged,
    layer_case,
    parse_layer_shape,
    run_bench,
)

__all__ = ["DEFAULT_SHAPES", "EAGER", "SLOW", "BenchError", "Case", "flagged", "layer_case", "parse_layer_shape",
           "run_bench"]
