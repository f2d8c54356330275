"""Every environment variable the package reads or sets, here and nowhere else: our PORTABLE_MOE_*
knobs (typed, documented in KNOBS), and the few variables of other tools (torchrun, Hugging Face)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .backends.base import DEFAULT_CACHE_DIR
from .ir import PortableMoeError


class KnobError(PortableMoeError):
    """An environment variable holds a value of the wrong form."""


@dataclass(frozen=True)
class Knob:
    name: str
    default: str
    meaning: str


KNOBS = (
    Knob("PORTABLE_MOE_BACKEND", "", "backend to use when none is given explicitly (else automatic)"),
    Knob("PORTABLE_MOE_DEVICE", "", "device to use when none is given explicitly (else the first accelerator)"),
    Knob("PORTABLE_MOE_CACHE_DIR", DEFAULT_CACHE_DIR, "compile caches, tuned configs, conformance results"),
    Knob("PORTABLE_MOE_VALIDATE", "0", "fraction of calls (0..1) re-run on the reference to check numerics"),
    Knob("PORTABLE_MOE_VALIDATE_RAISE", "0", "1: a shadow-validation failure raises instead of warning"),
    Knob("PORTABLE_MOE_TVM_THREADS", "0", "TVM CPU threads (0: every core this process may use)"),
    Knob("PORTABLE_MOE_TVM_TUNE_SECONDS", "30", "TVM first-use tuning budget, s per large GEMM on a new CPU (0: skip)"),
    Knob("ROCM_PATH", "", "ROCm folder with amdgcn/bitcode for TVM's ROCm code generation (else found)"),
)


def raw(name: str) -> str:
    knob = next(k for k in KNOBS if k.name == name)
    return os.environ.get(name, knob.default)


def backend() -> str | None:
    return raw("PORTABLE_MOE_BACKEND") or None


def device() -> str | None:
    return raw("PORTABLE_MOE_DEVICE") or None


def cache_dir() -> Path:
    return Path(raw("PORTABLE_MOE_CACHE_DIR")).expanduser()


def validate_fraction() -> float:
    text = raw("PORTABLE_MOE_VALIDATE")
    try:
        value = float(text)
    except ValueError:
        raise KnobError(f"PORTABLE_MOE_VALIDATE={text!r} must be a number in [0, 1]") from None
    if not 0 <= value <= 1:
        raise KnobError(f"PORTABLE_MOE_VALIDATE={text!r} must be in [0, 1]")
    return value


TRUE, FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def flag(name: str) -> bool:
    """A boolean knob: 1/true/yes/on or 0/false/no/off (any case); anything else is an error."""
    text = raw(name)
    if text.strip().lower() in TRUE:
        return True
    if text.strip().lower() in FALSE:
        return False
    raise KnobError(f"{name}={text!r} must be one of {'/'.join(TRUE)} or {'/'.join(f for f in FALSE if f)}")


def validate_raise() -> bool:
    return flag("PORTABLE_MOE_VALIDATE_RAISE")


def torchrun_rank() -> int:
    """This process's rank, as torchrun sets it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def torchrun_restarts() -> int:
    """How many times torchrun restarted this worker group (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def child_environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment with `extra` on top, for a child process."""
    return os.environ | extra


def prefer_offline_hub():
    """Hugging Face stays offline unless the user said otherwise (the demo builds its models locally)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def number(name: str, kind: type, least: float = 0):
    text = raw(name)
    try:
        value = kind(text)
    except ValueError:
        value = least - 1
    if not value >= least:         # NaN too
        raise KnobError(f"{name}={text!r} must be a{'n integer' if kind is int else ' number'} >= {least}")
    return value


def tvm_threads() -> int:
    return number("PORTABLE_MOE_TVM_THREADS", int)


def tvm_tune_seconds() -> float:
    return number("PORTABLE_MOE_TVM_TUNE_SECONDS", float)


def rocm_path() -> str | None:
    return raw("ROCM_PATH") or None


# backend -> {Options field: the knob that fills it}; portable_moe.runtime.options_for applies it
BACKEND_KNOBS = {
    "tvm": {"tune_seconds": tvm_tune_seconds, "threads": tvm_threads, "rocm_path": rocm_path},
}


def help_text() -> str:
    return "environment:\n" + "\n".join(f"  {k.name:28} {k.meaning} (default: {k.default or 'unset'})" for k in KNOBS)
