"""Backend discovery through the entry-point group `portable_moe.backends`. Nothing is imported
until a backend is asked for; one that fails to import raises BackendUnavailable with the reason."""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

from .backends.base import Backend
from .ir import PortableMoeError

GROUP = "portable_moe.backends"


class RegistryError(PortableMoeError):
    """An unknown backend name, or a backend that cannot be loaded."""


class BackendUnavailable(RegistryError):
    """A registered backend that cannot be loaded here; `reason` says why in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@cache
def entry_point_map() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def refresh():
    """Forget what was discovered (after installing a plug-in at run time)."""
    entry_point_map.cache_clear()
    instance_or_reason.cache_clear()


def backend_names() -> list[str]:
    return sorted(entry_point_map())


@cache
def instance_or_reason(name: str) -> Backend | str:
    eps = entry_point_map()
    if name not in eps:
        raise RegistryError(f"unknown backend '{name}'; known backends: {', '.join(sorted(eps))}")
    try:
        cls = eps[name].load()
    except (ImportError, AttributeError) as e:
        return f"{name}: cannot load ({e})"
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        return f"{name}: entry point {eps[name].value} is not a Backend subclass"
    return cls()


def load(name: str) -> Backend:
    """The backend instance. Raises RegistryError for an unknown name, BackendUnavailable (with the
    reason) for a registered one that cannot be loaded here."""
    backend = instance_or_reason(name)
    if isinstance(backend, str):
        raise BackendUnavailable(backend)
    return backend


def load_for_listing(name: str) -> Backend | BackendUnavailable:
    """The backend, or the error that says why not: for listings that show the unavailable ones too."""
    try:
        return load(name)
    except BackendUnavailable as e:
        return e


def loaded() -> dict[str, Backend]:
    """Every registered backend that loads here, by name (the others are left out; `load` says why)."""
    found = {name: load_for_listing(name) for name in backend_names()}
    return {name: b for name, b in found.items() if not isinstance(b, BackendUnavailable)}
