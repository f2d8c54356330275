"""Model configs: frozen, keyword-only, with named presets (a tiny `debug` one for tests)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..ir import DType, IRError, PortableMoeError, parse_json, read_bounded


class ConfigError(PortableMoeError):
    """A model config names an unknown field or holds an impossible value."""


MAX_SIZE = 2**31 - 1        # any one size (vocabulary, width, experts); products are bounded by the IR
MAX_LAYERS = 4096


def check_field(name: str, kind: str, value):
    """ints in 0..MAX_SIZE, floats finite and > 0, bools and strings of their own type."""
    if kind == "int" and (type(value) is not int or not 0 <= value <= MAX_SIZE):
        raise ConfigError(f"{name}={value!r} must be an int in 0..{MAX_SIZE}")
    if kind == "float" and (type(value) not in (int, float) or not math.isfinite(value) or value <= 0):
        raise ConfigError(f"{name}={value!r} must be a finite number > 0")
    if kind in ("bool", "str") and type(value).__name__ != kind:
        raise ConfigError(f"{name}={value!r} must be a {kind}")


@dataclass(frozen=True, kw_only=True)
class MoEConfig:
    name: str = "custom"
    vocab_size: int = 256
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    qk_norm: bool = False
    rope_theta: float = 10000.0
    eps: float = 1e-6
    experts: int = 8
    top_k: int = 2
    expert_ffn: int = 32
    shared_ffn: int = 0                 # width of the shared expert(s); 0 = none
    shared_gate: bool = False           # Qwen2-MoE: sigmoid(x @ w) scales the shared expert
    scoring: str = "softmax"            # softmax | sigmoid | softmax_topk
    normalize: bool = True
    num_groups: int = 1
    top_groups: int = 1
    group_score: str = "max"
    scaling: float = 1.0
    score_bias: bool = False            # DeepSeek-V3 selection-only bias
    router_bias: bool = False           # GPT-OSS bias on the router logits
    dtype: str = "float32"

    def __post_init__(self):
        for f in fields(self):
            check_field(f.name, f.type, getattr(self, f.name))
        if min(self.vocab_size, self.hidden, self.heads, self.kv_heads, self.head_dim, self.expert_ffn) < 1:
            raise ConfigError("vocab_size, hidden, heads, kv_heads, head_dim and expert_ffn must be >= 1")
        if self.layers > MAX_LAYERS:
            raise ConfigError(f"layers={self.layers} is more than {MAX_LAYERS}")
        if self.experts < 1 or self.top_k < 1 or self.top_k > self.experts:
            raise ConfigError(f"top_k={self.top_k} must be in 1..experts={self.experts}")
        if self.experts % self.num_groups:
            raise ConfigError(f"num_groups={self.num_groups} does not divide experts={self.experts}")
        if self.heads % max(self.kv_heads, 1):
            raise ConfigError(f"heads={self.heads} is not a multiple of kv_heads={self.kv_heads}")
        try:
            DType(self.dtype)
        except ValueError:
            raise ConfigError(f"dtype={self.dtype!r} is not a dtype of the IR") from None

    @property
    def dt(self) -> DType:
        return DType(self.dtype)

    def with_(self, **changes) -> MoEConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, MoEConfig] = {
    "debug": MoEConfig(name="debug"),
    "debug-deepseek": MoEConfig(name="debug-deepseek", experts=16, top_k=4, scoring="sigmoid", num_groups=4,
                                top_groups=2, group_score="top2_sum", scaling=2.5, score_bias=True,
                                shared_ffn=32),
    "mixtral-8x7b": MoEConfig(name="mixtral-8x7b", vocab_size=32000, hidden=4096, layers=32, heads=32,
                              kv_heads=8, head_dim=128, rope_theta=1e6, eps=1e-5, experts=8, top_k=2,
                              expert_ffn=14336, dtype="bfloat16"),
    "qwen3-30b-a3b": MoEConfig(name="qwen3-30b-a3b", vocab_size=151936, hidden=2048, layers=48, heads=32,
                               kv_heads=4, head_dim=128, qk_norm=True, rope_theta=1e6, experts=128, top_k=8,
                               expert_ffn=768, dtype="bfloat16"),
    "deepseek-v3": MoEConfig(name="deepseek-v3", vocab_size=129280, hidden=7168, layers=61, heads=128,
                             kv_heads=128, head_dim=128, experts=256, top_k=8, expert_ffn=2048,
                             shared_ffn=2048, scoring="sigmoid", num_groups=8, top_groups=4,
                             group_score="top2_sum", scaling=2.5, score_bias=True, dtype="bfloat16"),
}


def preset(name: str) -> MoEConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset '{name}'; presets: {', '.join(PRESETS)}") from None


def config_from_dict(obj: dict, where: str = "config") -> MoEConfig:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    known = {f.name for f in fields(MoEConfig)} | {"preset"}
    unknown = set(obj) - known
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    obj = dict(obj)
    base = preset(obj.pop("preset")) if "preset" in obj else MoEConfig()
    try:
        return replace(base, **obj)
    except (TypeError, IRError) as e:
        raise ConfigError(f"{where}: {e}") from None


def load_config(path: str | Path) -> MoEConfig:
    try:
        obj = parse_json(read_bounded(path, "config"))
    except IRError as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    return config_from_dict(obj, str(path))
