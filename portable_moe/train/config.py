"""TrainConfig: everything one training run needs, frozen, keyword-only, JSON round-trippable."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

from ..backends.devices import DeviceError, normalize
from ..ir import PortableMoeError


class TrainError(PortableMoeError):
    """A training setting is impossible, or a rank failed; the message names which and why."""


PLACEMENTS = ("even", "balanced", "islands")
ROUTINGS = ("island", "global")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    model: str = "debug"                 # a preset of portable_moe.models, or a model config JSON file
    devices: tuple[str, ...] = ("cpu", "cpu")
    backends: tuple[str, ...] = ("reference", "reference")
    speeds: tuple[float, ...] = ()      # relative expert-compute speed per rank (1 = full); () = all 1
    slowdown: str = "repeat"            # how a slow rank is emulated: repeat (compute 1/speed times) | sleep
    steps: int = 20
    batch: int = 8                      # global sequences per step (split evenly over ranks)
    seq: int = 16
    lr: float = 1e-2
    weight_decay: float = 0.0
    seed: int = 0
    placement: str = "balanced"         # initial placement: even | balanced (speed-proportional) | islands
    routing: str = "island"             # island: tokens follow the plan's by_node (islands as nodes) | global
    bridge_gbps: float = 0.0            # emulate a bridge of this many GB/s between islands (0 = as is)
    replan_every: int = 0               # re-plan from load statistics every N steps (0 = never)
    max_move_bytes: int | None = None
    aux_loss: float = 0.0               # Switch/GShard load-balancing loss coefficient
    z_loss: float = 1e-3                # router z-loss coefficient
    aux_free_rate: float = 0.0          # DeepSeek-V3 bias update rate (1e-3 in the paper); 0 = off
    capacity_factor: float = 0.0        # 0 = dropless
    bridge: str = "gloo"                # cross-vendor world backend (a better library can replace gloo)
    native: tuple[str, ...] = ("cuda=nccl", "rocm=nccl")  # vendor=backend for the per-vendor subgroups
    timeout_s: float = 60.0
    checkpoint: str = ""                # directory; "" = no checkpoints
    checkpoint_every: int = 0           # 0 = only at the end (when a directory is given)
    resume: bool = False
    overwrite: bool = False             # a fresh run may delete the checkpoints already in the directory
    fail_at: str = ""                   # fault injection for tests: "RANK:STEP[:hang|:raise]", first attempt only
    report: str = ""                    # directory for the report (PNG, JSON)
    dump: str = ""                      # tests: each rank writes its step-0 gradients here (safetensors)

    def __post_init__(self):
        try:        # one spelling per device ('cuda' is 'cuda:0'), island labels kept: config, checkpoints, lookup
            object.__setattr__(self, "devices", tuple(normalize(d) for d in self.devices))
        except DeviceError as e:
            raise TrainError(f"--devices: {e}") from None
        n = len(self.devices)
        if n < 1:
            raise TrainError("devices is empty; give one device per rank, e.g. cpu,cpu")
        if len(self.backends) != n:
            raise TrainError(f"backends has {len(self.backends)} entries but devices has {n}; give one per rank")
        if self.speeds and (len(self.speeds) != n or min(self.speeds) <= 0):
            raise TrainError(f"speeds={list(self.speeds)} must hold {n} positive numbers (one per rank)")
        if self.batch % n:
            raise TrainError(f"batch={self.batch} is not divisible by the {n} ranks; use a multiple of {n}")
        if self.placement not in PLACEMENTS:
            raise TrainError(f"placement={self.placement!r}; choose one of {', '.join(PLACEMENTS)}")
        if not 0 <= self.bridge_gbps < float("inf"):
            raise TrainError(f"bridge_gbps={self.bridge_gbps} must be a finite number >= 0 (0 = no slowdown)")
        if self.routing not in ROUTINGS:
            raise TrainError(f"routing={self.routing!r}; choose one of {', '.join(ROUTINGS)}")
        if self.slowdown not in ("repeat", "sleep"):
            raise TrainError(f"slowdown={self.slowdown!r}; choose repeat or sleep")
        if self.steps < 0 or self.replan_every < 0 or self.checkpoint_every < 0:
            raise TrainError("steps, replan_every and checkpoint_every must be >= 0")
        if self.resume and not self.checkpoint:
            raise TrainError("resume needs a checkpoint directory (--checkpoint DIR)")
        if self.resume and self.overwrite:
            raise TrainError("resume and overwrite exclude each other: continue the checkpoints or start over")

    @property
    def world(self) -> int:
        return len(self.devices)

    def speed(self, rank: int) -> float:
        return self.speeds[rank] if self.speeds else 1.0

    def native_backends(self) -> dict[str, str]:
        out = {}
        for item in self.native:
            vendor, sep, backend = item.partition("=")
            if not sep or not vendor or not backend:
                raise TrainError(f"native entry {item!r} must look like vendor=backend (e.g. cuda=nccl)")
            out[vendor] = backend
        return out

    def with_(self, **changes) -> TrainConfig:
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def config_from_json(text: str) -> TrainConfig:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise TrainError(f"train config is not JSON: {e}") from None
    known = {f.name for f in fields(TrainConfig)}
    if not isinstance(obj, dict) or set(obj) - known:
        raise TrainError(f"train config has unknown field(s) {sorted(set(obj) - known)}")
    tuples = {k: tuple(v) for k, v in obj.items() if isinstance(v, list)}
    return TrainConfig(**(obj | tuples))
