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


@pytest.mark.parametrize("given,want", [
    ("cuda", "cuda:0"), ("CUDA", "cuda:0"), ("cuda:1", "cuda:1"), ("rocm", "rocm:0"), ("opencl", "opencl:0"),
    ("cpu", "cpu"), ("cpu:0", "cpu"), (" cpu ", "cpu"), ("cpu@amd", "cpu@amd"), ("cuda@nvidia", "cuda:0@nvidia")])
def test_a_kind_alone_means_index_zero(given, want):
    assert devs.normalize(given) == want


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:-1", "", "cpu@", "cuda:"])
def test_malformed_device_names_are_refused_by_name(bad):
    with pytest.raises(devs.DeviceError, match="is not a device name"):
        devs.normalize(bad)


def fake_machine(monkeypatch, *props):
    """discover() as on a machine with these GPUs (recorded property sets) and a CPU."""
    gpus = [devs.gpu_from_props(p, i, hip_version="6.3" if "gcnArchName" in p else None, cuda_version="13.0")
            for i, p in enumerate(props)]
    monkeypatch.setattr(devs, "discover", lambda: [*gpus, devs.cpu_device()])
    return gpus


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:0"])
def test_every_entry_point_resolves_cuda_as_cuda0(monkeypatch, spec):
    from portable_moe.runtime import resolve_device

    h100, _ = fake_machine(monkeypatch, H100, H100)
    assert resolve_device(spec) == h100
    monkeypatch.setenv("PORTABLE_MOE_DEVICE", spec)
    assert resolve_device(None) == h100


def test_torch_habit_of_calling_amd_gpus_cuda_is_understood(monkeypatch):
    from portable_moe.runtime import resolve_device

    mi300, = fake_machine(monkeypatch, MI300X)
    assert resolve_device("cuda") == mi300 and resolve_device("rocm:0") == mi300
    with pytest.raises(devs.DeviceError, match="no device 'cuda:1'.*found: rocm:0, cpu"):
        resolve_device("cuda:1")


def test_compile_and_patch_hf_take_any_spelling_of_a_device():
    import torch

    import portable_moe
    from portable_moe.models import build_moe_layer, init_params, preset

    graph = build_moe_layer(preset("debug"))
    model = portable_moe.compile(graph, init_params(graph, seed=0), device="CPU:0", backend="reference")
    assert model.selection.device.id == "cpu"
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MixtralConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2, vocab_size=32)
    hf = transformers.MixtralForCausalLM(cfg)
    assert portable_moe.patch_hf(hf, backend="reference", device="cpu:0")
    with torch.no_grad():
        assert hf(torch.zeros(1, 3, dtype=torch.long)).logits.shape == (1, 3, 32)
