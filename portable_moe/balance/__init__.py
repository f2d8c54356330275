"""Heterogeneity-aware expert load balancing (a replacement for DeepSeek's EPLB on mixed-vendor clusters).

Equalises time (tokens / throughput) rather than tokens, gives each device the slots its own memory allows,
and re-plans incrementally under a bytes-moved budget.
"""

from .calibrate import calibrate, calibrate_backend, calibrate_torch
from .cluster import BalanceError, Cluster, ClusterDevice, cluster_from_json, load_cluster
from .eplb import eplb_placement, even_placement, rebalance_experts
from .placement import (
    LayerPlacement,
    Placement,
    load_loads,
    load_placement,
    moved_bytes,
    placement_from_json,
    predict,
    save_placement,
    validate_loads,
    validate_placement,
)
from .planner import plan
from .stats import LoadStats

__all__ = [
    "BalanceError",
    "Cluster",
    "ClusterDevice",
    "LayerPlacement",
    "LoadStats",
    "Placement",
    "calibrate",
    "calibrate_backend",
    "calibrate_torch",
    "cluster_from_json",
    "eplb_placement",
    "even_placement",
    "load_cluster",
    "load_loads",
    "load_placement",
    "moved_bytes",
    "placement_from_json",
    "plan",
    "predict",
    "rebalance_experts",
    "save_placement",
    "validate_loads",
    "validate_placement",
]
