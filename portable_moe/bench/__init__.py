"""The benchmark home: one timer (timer.py), one torch eager MoE baseline (eager.py), and what
`portable-moe bench` runs on them (layer.py: one MoE layer's forward on every backend)."""

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
