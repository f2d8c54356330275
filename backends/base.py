"""The contract every backend implements, in-tree or plug-in.

A backend is found through the entry-point group `portable_moe.backends`, instantiated with no
arguments, and asked:
  availability(device)  -> None when it can run on the device, else a one-line reason
  support(device)       -> which ops and dtypes it runs on that device, as data
  compile(graph, device, options) -> an Executable for that graph on that device
  lower(graph, target, out_dir, options) -> ahead-of-time artifacts plus manifest.json
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from ..ir import DType, Graph, IRError, Node, PortableMoeError
from .devices import Device

# where an Options built directly (not filled by portable_moe.runtime.options_for) keeps its caches; the
# PORTABLE_MOE_CACHE_DIR knob defaults to it too
DEFAULT_CACHE_DIR = "~/.cache/portable_moe"


class BackendError(PortableMoeError):
    """A backend cannot do what was asked (unknown target, unsupported op, missing toolchain)."""


@dataclass(frozen=True)
class BackendOptions:
    """Options shared by every backend; a backend subclasses it (frozen, validated in __post_init__)."""

    cache_dir: str | None = None

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and f.type in ("int", "float") and value < 0:
                raise BackendError(f"option {f.name}={value} must be >= 0")

    @classmethod
    def from_dict(cls, values: Mapping) -> BackendOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise BackendError(f"unknown option(s) {sorted(unknown)} for {cls.__name__}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def of(cls, options: BackendOptions):
        """options as this class: a plain (or another backend's) BackendOptions keeps its shared fields."""
        if isinstance(options, cls):
            return options
        return cls(**{f.name: getattr(options, f.name) for f in fields(BackendOptions)})

    def cache_root(self, backend: str) -> Path:
        """cache_dir (options_for fills it from the PORTABLE_MOE_CACHE_DIR knob), else the backend's folder
        under DEFAULT_CACHE_DIR."""
        return Path(self.cache_dir or Path(DEFAULT_CACHE_DIR) / backend).expanduser()

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Support:
    """What a backend runs on one kind of device: op -> dtypes, and why the rest is declined."""

    ops: Mapping[str, frozenset[DType]]
    declined: Mapping[str, str] = field(default_factory=dict)   # "op" or "op:dtype" or "dtype" -> reason

    def reason(self, op: str, dtype: DType) -> str | None:
        """None when (op, dtype) is supported, else why not."""
        if op in self.ops and dtype in self.ops[op]:
            return None
        for key in (f"{op}:{dtype.value}", op, dtype.value):
            if key in self.declined:
                return self.declined[key]
        return f"{op} in {dtype.value} is not implemented"

    def to_dict(self) -> dict:
        return {"ops": {op: sorted(d.value for d in ds) for op, ds in sorted(self.ops.items())},
                "declined": dict(self.declined)}


@functools.cache
def import_failure(module: str) -> str | None:
    """None when `module` imports here, else "<module> not importable: <why>" (a missing optional
    component is a reason a backend is unusable, never a traceback later)."""
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - a broken install raises more than ImportError (OSError, ...)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"{module} not importable: {why}"
    return None


def node_dtype(node: Node, types: Mapping) -> DType:
    """The dtype a node computes in: its first float output (router, dispatch) or float input."""
    for v in node.outputs:
        if v.type.dtype.is_float:
            return v.type.dtype
    for i in node.inputs:
        if i is not None and types[i].dtype.is_float:
            return types[i].dtype
    raise IRError("node has no float value", node.name, node.op)


# graph inputs that index something: op -> (operand position, the bound from the node and the types)
INDEX_OPERANDS = {
    "embedding": (0, lambda node, types: types[node.inputs[1]].shape[0]),
    "cross_entropy": (1, lambda node, types: types[node.inputs[0]].shape[-1]),
    "dispatch": (1, lambda node, types: node.attrs["num_experts"]),
}


def index_inputs(graph: Graph) -> list[tuple[str, Node, int | str]]:
    """(graph input, the node it indexes into, the exclusive upper bound) for each index-valued input."""
    inputs = {v.name for v in graph.inputs}
    types = graph.types()
    out = []
    for node in graph.nodes:
        if node.op in INDEX_OPERANDS:
            pos, bound = INDEX_OPERANDS[node.op]
            if len(node.inputs) > pos and node.inputs[pos] in inputs:
                out.append((node.inputs[pos], node, bound(node, types)))
    return out


def check_index_inputs(graph: Graph, checks: list, inputs: Mapping, params: Mapping):
    """The one input check every backend gets: ids, targets and expert indices fed to the graph are in
    range (a backend would otherwise wrap, clamp or read out of bounds, each differently)."""
    for name, node, bound in checks:
        t = inputs.get(name)
        if t is None or not t.numel():
            continue
        if not isinstance(bound, int):
            bound = params[node.inputs[1]].shape[0] if node.op == "embedding" else None
        allowed = {node.attrs.get("ignore_index", -100)} if node.op == "cross_entropy" else set()
        low, high = int(t.min()), int(t.max())
        bad = [v for v in (low, high) if v not in allowed and (v < 0 or (bound is not None and v >= bound))]
        if bad:
            what = {"embedding": "ids", "cross_entropy": "targets", "dispatch": "expert indices"}[node.op]
            raise IRError(f"{what} out of range [0, {bound}): input '{name}' holds {bad[0]}", node=node.name,
                          op=node.op)


class Executable(ABC):
    """A graph compiled for one device. run() takes the graph inputs and params by name and returns
    the graph outputs in order. When `differentiable`, run() is traced by torch autograd; otherwise
    the runtime computes gradients by re-running the reference (the documented fallback).

    Every subclass's run() is entered through check_index_inputs, so out-of-range ids are refused the
    same way on every backend, in-tree or plug-in, before any kernel sees them."""

    differentiable: ClassVar[bool] = False

    def __init__(self, graph: Graph, device: Device):
        self.graph, self.device = graph, device

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is None or getattr(run, "checks_inputs", False):
            return

        @functools.wraps(run)
        def checked(self, inputs: Mapping, params: Mapping) -> list:
            if "_index_checks" not in self.__dict__:
                self._index_checks = index_inputs(self.graph)
            check_index_inputs(self.graph, self._index_checks, inputs, params)
            return run(self, inputs, params)

        checked.checks_inputs = True
        cls.run = checked

    @abstractmethod
    def run(self, inputs: Mapping, params: Mapping) -> list:
        """Executes the graph; returns torch tensors on the device's torch device."""


class Backend(ABC):
    name: ClassVar[str]
    executes: ClassVar[bool] = True          # False for compile-only backends (null)
    deterministic: ClassVar[bool] = True
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    targets: ClassVar[tuple[str, ...]] = ()

    def devices(self) -> list[Device]:
        """Devices only this backend can reach (e.g. OpenCL platforms); torch's devices are found elsewhere."""
        return []

    @abstractmethod
    def availability(self, device: Device) -> str | None:
        """None when this backend can execute on the device, else a one-line reason."""

    @abstractmethod
    def support(self, device: Device) -> Support:
        """The ops and dtypes this backend runs on the device."""

    @abstractmethod
    def compile(self, graph: Graph, device: Device, options: BackendOptions) -> Executable:
        """Compiles a verified graph whose every node is supported; raises BackendError otherwise."""

    def lower(self, graph: Graph, target: str, out_dir: Path, options: BackendOptions) -> dict:
        """Writes ahead-of-time artifacts for a named target and returns the manifest it wrote."""
        raise BackendError(f"{self.name} does not lower ahead of time")

    def schedule(self, device: Device, options: BackendOptions) -> str | None:
        """One line on how this backend's kernels are scheduled for the device (tuned for it, from where),
        with `options` (filled by portable_moe.runtime.options_for) saying where its tuning is kept."""
        return None

    def check_target(self, target: str):
        if target not in self.targets:
            raise BackendError(f"{self.name}: unknown target '{target}'; supported: {', '.join(self.targets)}")

    def unsupported(self, graph: Graph, device: Device) -> list[tuple[Node, str]]:
        """The nodes of the graph this backend cannot run on the device, each with the reason."""
        types = graph.types()
        support = self.support(device)
        out = []
        for node in graph.nodes:
            reason = support.reason(node.op, node_dtype(node, types))
            if reason:
                out.append((node, reason))
        return out

    def require_supported(self, graph: Graph, device: Device):
        missing = self.unsupported(graph, device)
        if missing:
            node, reason = missing[0]
            raise BackendError(f"{self.name} cannot compile node '{node.name}' (op {node.op}): {reason}")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_manifest(out_dir: Path, backend: str, target: str, graph: Graph, kernels: list[dict],
                   **extra) -> dict:
    """kernels: one dict per kernel with an 'artifacts' {stage: filename} map; adds each file's sha256."""
    out_dir = Path(out_dir)
    for k in kernels:
        k["sha256"] = {stage: sha256_file(out_dir / name) for stage, name in k.get("artifacts", {}).items()}
    manifest = {"format": "portable_moe.manifest", "version": 1, "backend": backend, "target": target,
                "graph": graph.name, "kernels": kernels, **extra}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest
