"""portable_moe.compile: graph + params + device (+ backend) -> a CompiledModel (torch.nn.Module)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import fields

import torch

from .. import knobs, registry
from ..backends import devices as devs
from ..backends.base import BackendOptions, node_dtype
from ..backends.devices import Device
from ..ir import DType, Graph, verify
from ..models.params import check_params
from .module import CompiledModel
from .partition import partition
from .select import select
from .validate import Validator


def all_devices() -> list[Device]:
    """torch's devices, then the devices only some backend can reach (OpenCL platforms)."""
    found = devs.discover()
    for backend in registry.loaded().values():
        found += [d for d in backend.devices() if d.id not in {x.id for x in found}]
    return found


def resolve_device(device: str | Device | None) -> Device:
    if isinstance(device, Device):
        return device
    spec = device or knobs.device()
    torch_devices = devs.discover()
    if spec is None:
        return torch_devices[0]
    if any(d.kind == devs.normalize(spec).split(":")[0] for d in torch_devices):
        return devs.find(spec, torch_devices)
    return devs.find(spec, all_devices())


def graph_dtype(graph: Graph) -> DType:
    types = graph.types()
    return Counter(node_dtype(n, types) for n in graph.nodes).most_common(1)[0][0]


def options_for(backend, options: Mapping | None = None) -> BackendOptions:
    """The backend's Options: the fields the caller gave, the rest filled from knobs (cache_dir: the
    backend's folder under PORTABLE_MOE_CACHE_DIR; backend fields: knobs.BACKEND_KNOBS), else defaults.
    Every run path builds its Options here, so the environment reaches every backend the same way."""
    given = dict(options or {})
    names = {f.name for f in fields(backend.Options)}
    knobbed = {"cache_dir": lambda: str(knobs.cache_dir() / backend.name)} | knobs.BACKEND_KNOBS.get(backend.name, {})
    filled = {name: read() for name, read in knobbed.items() if name in names and name not in given}
    return backend.Options.from_dict(filled | given)


def compile(graph: Graph, params: Mapping[str, torch.Tensor], device: str | Device | None = None,
            backend: str | None = None, options: Mapping | None = None,
            validate: float | None = None) -> CompiledModel:
    """Compiles a graph for one device. Nodes the chosen backend lacks run on the next backend
    for that device; `model.why()` says what was chosen, why, and which nodes ran where."""
    verify(graph)
    check_params(graph, params)
    dev = resolve_device(device)
    selection = select(dev, graph_dtype(graph), backend)
    ranked = [(n, registry.load(n)) for n in selection.ranked]
    segments = []
    for segment in partition(graph, dev, ranked):
        b = registry.load(segment.backend)
        opts = options_for(b, options if segment.backend == selection.winner else None)
        segments.append((segment, b.compile(segment.graph, dev, opts)))
    fraction = knobs.validate_fraction() if validate is None else validate
    validator = Validator(fraction, knobs.validate_raise(), knobs.cache_dir() / "repro") if fraction else None
    moved = {k: v.to(dev.torch_device) for k, v in params.items()}
    return CompiledModel(graph, moved, selection, segments, validator)
