"""Backend discovery through the entry-point group `portable_moe.backends`. Nothing is imported
until a backend is asked for; one that fails to import is listed as unavailable with the reason."""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

from .backends.base import Backend
from .ir import PortableMoeError

GROUP = "portable_moe.backends"


class RegistryError(PortableMoeError):
    """An unknown backend name, or a backend that cannot be loaded."""


@cache
def entry_point_map() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def refresh():
    """Forget what was discovered (after installing a plug-in at run time)."""
    entry_point_map.cache_clear()
    load.cache_clear()


def backend_names() -> list[str]:
    return sorted(entry_point_map())


@cache
def load(name: str) -> Backend | str:
    """The backend instance, or a one-line reason why it cannot be loaded here."""
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


def get_backend(name: str) -> Backend:
    backend = load(name)
    if isinstance(backend, str):
        raise RegistryError(backend)
    return backend
