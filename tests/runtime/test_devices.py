"""Device descriptions parsed from recorded torch property sets of each vendor."""

import pytest

from portable_moe.backends import devices as devs

H100 = {"name": "NVIDIA H100 80GB HBM3", "major": 9, "minor": 0, "total_memory": 85_045_395_456,
        "multi_processor_count": 132}
MI300X = {"name": "AMD Instinct MI300X", "major": 9, "minor": 4, "total_memory": 205_822_885_888,
          "gcnArchName": "gfx942:sramecc+:xnack-", "multi_processor_count": 304}
MI250 = {"name": "AMD Instinct MI250X/MI250", "major": 9, "minor": 0, "total_memory": 68_702_699_520,
         "gcnArchName": "gfx90a:sramecc+:xnack-"}
ARC = {"name": "Intel(R) Arc(TM) A770 Graphics", "total_memory": 16_225_243_136, "driver_version": "1.3.27642",
       "architecture": "xe-hpg"}


def test_nvidia():
    d = devs.gpu_from_props(H100, 0, hip_version=None, cuda_version="12.8")
    assert (d.kind, d.vendor, d.arch, d.id, d.torch_device) == ("cuda", "nvidia", "sm_90", "cuda:0", "cuda:0")
    assert d.driver == "cuda 12.8" and d.memory_bytes == 85_045_395_456


@pytest.mark.parametrize("props,arch", [(MI300X, "gfx942"), (MI250, "gfx90a")])
def test_amd(props, arch):
    d = devs.gpu_from_props(props, 1, hip_version="6.3.42131", cuda_version=None)
    assert (d.kind, d.vendor, d.arch, d.id) == ("rocm", "amd", arch, "rocm:1")
    assert d.torch_device == "cuda:1"          # ROCm builds of torch address AMD GPUs as cuda
    assert d.driver == "hip 6.3.42131"


def test_intel_xpu():
    d = devs.xpu_from_props(ARC, 0)
    assert (d.kind, d.vendor, d.arch, d.torch_device) == ("xpu", "intel", "xe-hpg", "xpu:0")


def test_apple_mps():
    d = devs.mps_device(memory=17_179_869_184, macos="15.1")
    assert (d.kind, d.vendor, d.torch_device) == ("mps", "apple", "mps")


def test_this_machine_has_a_cpu_and_a_missing_device_is_named():
    found = devs.discover()
    assert found[-1].kind == "cpu" and found[-1].memory_bytes > 0
    with pytest.raises(devs.DeviceError, match="no device 'cuda:3'.*found: .*cpu"):
        devs.find("cuda:3", found)
