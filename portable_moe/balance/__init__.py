"""Heterogeneity-aware expert load balancing (a replacement for DeepSeek's EPLB on mixed-vendor clusters).

Equalises time (tokens / throughput) rather than tokens within each device's memory (all layers together),
keeps tokens inside vendor islands where the bridge costs more than it saves, and re-plans incrementally
under a bytes-moved budget.
"""

from .calibrate import calibrate, calibrate_backend, calibrate_torch
from .cluster import BalanceError, Cluster, ClusterDevice, Links, cluster_from_json, load_cluster
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
    "Links",
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
