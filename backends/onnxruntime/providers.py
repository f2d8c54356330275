"""Which onnxruntime execution providers serve which kind of device, and why one is not usable."""

from __future__ import annotations

from ..devices import Device

# Preferred first; CPUExecutionProvider is always appended as the fallback for nodes an EP declines.
PROVIDERS_BY_KIND: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "TensorrtExecutionProvider"),
    "rocm": ("MIGraphXExecutionProvider", "ROCMExecutionProvider"),
    "xpu": ("OpenVINOExecutionProvider", "DmlExecutionProvider"),
    "mps": ("CoreMLExecutionProvider",),
}


def available_providers() -> list[str] | str:
    """The providers of the installed onnxruntime, or why onnxruntime cannot be imported."""
    try:
        import onnxruntime
    except ImportError as e:
        return f"onnxruntime is not installed ({e}); pip install onnxruntime (or onnxruntime-gpu)"
    return list(onnxruntime.get_available_providers())


def choose(device: Device, available: list[str]) -> list[str] | str:
    """The provider list for a session on the device, or a one-line reason there is none."""
    wanted = PROVIDERS_BY_KIND.get(device.kind)
    if wanted is None:
        return f"onnxruntime: no execution provider serves {device.kind} devices"
    found = [p for p in wanted if p in available]
    if not found:
        return (f"onnxruntime: no {device.kind.upper()} execution provider in this onnxruntime build "
                f"(wanted {' or '.join(wanted)}; providers: {', '.join(available)})")
    return found + ([] if "CPUExecutionProvider" in found else ["CPUExecutionProvider"])


def provider_options(providers: list[str], device: Device) -> list[dict]:
    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
           "MIGraphXExecutionProvider", "DmlExecutionProvider"}
    return [{"device_id": str(device.index)} if p in gpu else {} for p in providers]
