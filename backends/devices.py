"""Devices as torch sees them (CUDA, ROCm/HIP, XPU, MPS, CPU), described the same way for every vendor.

The parsing functions take plain property dicts so they can be tested with recorded property sets."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

from ..ir.errors import PortableMoeError


class DeviceError(PortableMoeError):
    """A device was named that this machine does not have."""


@dataclass(frozen=True)
class Device:
    kind: str            # cpu | cuda | rocm | xpu | mps | opencl
    index: int
    vendor: str
    name: str
    arch: str            # sm_90, gfx942, x86_64, ...
    memory_bytes: int
    driver: str

    @property
    def id(self) -> str:
        return "cpu" if self.kind == "cpu" else f"{self.kind}:{self.index}"

    @property
    def torch_device(self) -> str:
        """The torch device that holds this device's tensors (ROCm builds of torch say 'cuda')."""
        if self.kind in ("cpu", "opencl"):
            return "cpu"
        if self.kind == "mps":
            return "mps"
        return f"{'cuda' if self.kind == 'rocm' else self.kind}:{self.index}"

    def to_dict(self) -> dict:
        return {"id": self.id, **asdict(self)}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def cpu_device() -> Device:
    return Device("cpu", 0, platform.machine(), cpu_name(), platform.machine(), cpu_memory(),
                  f"{os.cpu_count()} threads")


def gpu_from_props(props: dict, index: int, hip_version: str | None, cuda_version: str | None) -> Device:
    """A CUDA or ROCm device from torch.cuda.get_device_properties (as a dict) and torch.version."""
    if hip_version:
        arch = str(props.get("gcnArchName", "")).split(":")[0] or "gfx?"
        return Device("rocm", index, "amd", props["name"], arch, int(props["total_memory"]), f"hip {hip_version}")
    arch = f"sm_{props['major']}{props['minor']}"
    return Device("cuda", index, "nvidia", props["name"], arch, int(props["total_memory"]), f"cuda {cuda_version}")


def xpu_from_props(props: dict, index: int) -> Device:
    arch = str(props.get("architecture", props.get("device_id", "xe")))
    return Device("xpu", index, "intel", props["name"], arch, int(props["total_memory"]),
                  str(props.get("driver_version", "")))


def mps_device(memory: int, macos: str) -> Device:
    return Device("mps", 0, "apple", "Apple GPU (MPS)", "apple", memory, f"macOS {macos}")


def props_dict(props) -> dict:
    names = ("name", "major", "minor", "total_memory", "gcnArchName", "multi_processor_count",
             "driver_version", "architecture", "device_id")
    return {n: getattr(props, n) for n in names if hasattr(props, n)}


def discover() -> list[Device]:
    """Every device torch can reach here, CPU last."""
    import torch

    found = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            found.append(gpu_from_props(props_dict(torch.cuda.get_device_properties(i)), i,
                                        torch.version.hip, torch.version.cuda))
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        for i in range(torch.xpu.device_count()):
            found.append(xpu_from_props(props_dict(torch.xpu.get_device_properties(i)), i))
    if torch.backends.mps.is_available():
        found.append(mps_device(int(torch.mps.recommended_max_memory()), platform.mac_ver()[0]))
    found.append(cpu_device())
    return found


KINDS = ("cpu", "cuda", "rocm", "xpu", "mps", "opencl")


def normalize(name: str) -> str:
    """A device name as people write it -> its id, the same in every entry point: a kind alone means
    index 0 (`cuda` is `cuda:0`), the CPU is `cpu`; an island label (`cpu@amd`) is kept."""
    text = str(name).strip().lower()
    base, at, island = text.partition("@")
    kind, colon, index = base.partition(":")
    if kind not in KINDS or (colon and not index.isdigit()) or (at and not island):
        raise DeviceError(f"'{name}' is not a device name; write KIND or KIND:INDEX with KIND one of "
                          f"{', '.join(KINDS)} (e.g. cuda, cuda:1, cpu)")
    if kind == "cpu" and int(index or 0) == 0:
        return "cpu" + at + island
    return f"{kind}:{int(index or 0)}" + at + island


def find(device_id: str, devices: list[Device]) -> Device:
    """The device named device_id (any form normalize() takes); torch's habit of calling AMD GPUs
    `cuda` is understood on a machine whose GPUs are ROCm ones."""
    wanted = normalize(device_id).partition("@")[0]
    for d in devices:
        if d.id == wanted:
            return d
    if wanted.startswith("cuda:"):
        rocm = [d for d in devices if d.id == wanted.replace("cuda", "rocm", 1)]
        if rocm and not any(d.kind == "cuda" for d in devices):
            return rocm[0]
    known = ", ".join(d.id for d in devices)
    raise DeviceError(f"no device '{device_id}' on this machine; found: {known}")
