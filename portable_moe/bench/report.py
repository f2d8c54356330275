"""The Markdown section every `portable-moe bench` kind writes with --markdown: the command that
produced it, the machine, the versions, the date and the load, then the table."""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata

from ..backends.devices import cpu_name

PACKAGES = ("torch", "numpy", "scipy", "onnxruntime", "apache-tvm", "triton", "transformers")


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join([f"Python {platform.python_version()}", *found])


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"


def is_number(text: str) -> bool:
    return text.replace(".", "", 1).isdigit()


def section(title: str, command: str, body: list[str], device: str = "", load_before: str = "") -> str:
    """One Markdown section: `## title`, how to regenerate it, where and when it ran, then body."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{cpu_name()}, {os.cpu_count()} hardware threads" + (f"; device {device}" if device else "")
    after = load()
    loads = f"{load_before} before, {after} after" if load_before else after
    crowded = any(v > (os.cpu_count() or 1) for v in map(float, filter(is_number, (load_before, after))))
    why = ("above the core count: other jobs shared the machine" if crowded else
           "at most the core count, this run's own threads included")
    return "\n".join([
        f"## {title}", "",
        f"Regenerate: `{command}`", "",
        f"- machine: {machine}",
        f"- versions: {versions()}",
        f"- date: {now}",
        f"- 1-minute load average: {loads} ({why}; read the ratios within a table, not absolute numbers)", "",
        *body]).rstrip() + "\n"
