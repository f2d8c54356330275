"""Expert-parallel training across heterogeneous devices on torch.distributed: one rank per device, each
with its own backend; gloo bridges vendors; the load balancer's placement decides which rank serves
which expert; checkpoints are sharded, atomic and resumable on another rank mix."""

from .config import TrainConfig, TrainError, config_from_json

__all__ = ["TrainConfig", "TrainError", "config_from_json"]
