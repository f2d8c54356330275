"""Ahead-of-time lowering of the debug model with no GPU: the artifacts are real (ptxas assembles the PTX,
the grouped GEMM uses each target's matrix instructions, the hsaco is an AMDGPU ELF for its gfx)."""

import dataclasses
import json
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
import triton

from portable_moe.backends.base import BackendError
from portable_moe.backends.triton import TritonBackend, TritonOptions
from portable_moe.backends.triton import lower as lower_module
from portable_moe.models import build_model, preset

TARGETS = ("cuda:sm_80", "cuda:sm_90", "cuda:sm_100", "rocm:gfx90a", "rocm:gfx942", "rocm:gfx1100")
TRITON_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
# Triton emits PTX 9.x for sm_90a/sm_100a; only the ptxas Triton ships for Blackwell accepts it.
PTXAS = TRITON_BIN / "ptxas-blackwell"
EM_AMDGPU, EM_CUDA = 224, 190
# LLVM's EF_AMDGPU_MACH values (llvm/BinaryFormat/ELF.h)
AMDGPU_MACH = {"gfx90a": 0x3F, "gfx942": 0x4C, "gfx1100": 0x41}
# fp32 on RDNA3: WMMA takes only 16-bit and int8 inputs, so an fp32 GEMM runs on FMA there.
# fp32 on sm_100: Triton lowers the fused SwiGLU's pair of 3xTF32 dots to FMA there (3.6 and 3.9); the 16-bit
# kernels use tcgen05.mma (test_16bit_moe_gemm_uses_the_hopper_and_blackwell_paths...).
MATRIX = {"cuda:sm_80": "mma.sync", "cuda:sm_90": "wgmma", "rocm:gfx90a": "v_mfma", "rocm:gfx942": "v_mfma"}


@pytest.fixture(scope="module")
def lowered(tmp_path_factory) -> dict:
    """target -> (out_dir, manifest, seconds) for the debug model (float32), lowered once."""
    root = tmp_path_factory.mktemp("triton_lower")
    options = TritonOptions(cache_dir=str(root / "cache"), stages=("ttir", "llir"))
    graph = build_model(preset("debug"))
    out = {}
    for target in TARGETS:
        start = time.perf_counter()
        manifest = TritonBackend().lower(graph, target, root / target.replace(":", "_"), options)
        out[target] = (root / target.replace(":", "_"), manifest, time.perf_counter() - start, options, graph)
    return out


def elf_header(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{path.name} is not a 64-bit ELF"
    return struct.unpack_from("<H", data, 18)[0], struct.unpack_from("<I", data, 48)[0]


@pytest.mark.parametrize("target", TARGETS)
def test_manifest_lists_every_kernel_with_its_artifacts(lowered, target):
    out_dir, manifest, _, _, graph = lowered[target]
    on_disk = json.loads((out_dir / "manifest.json").read_text())
    assert on_disk == manifest and on_disk["target"] == target and on_disk["triton_version"] == triton.__version__
    names = {k["kernel"] for k in manifest["kernels"]}
    assert names == {"router_kernel", "bucket_kernel", "align_kernel", "moe_gemm_kernel"}   # the fused MoE FFN
    binary = ("ptx", "cubin") if target.startswith("cuda") else ("amdgcn", "hsaco")
    moe_nodes = {n.name for n in graph.nodes if n.op in ("router", "dispatch", "grouped_matmul", "swiglu", "combine")}
    assert moe_nodes == {n for k in manifest["kernels"] for n in k["nodes"]}
    for k in manifest["kernels"]:
        assert set(k["artifacts"]) == {"ttir", "llir", *binary}
        assert k["num_warps"] > 0 and k["shared_memory"] >= 0 and k["signature"] and k["constexprs"]
        for stage, name in k["artifacts"].items():
            assert (out_dir / name).stat().st_size > 0 and len(k["sha256"][stage]) == 64
    assert {n["op"] for n in manifest["not_lowered"]} >= {"attention", "embedding", "rms_norm"}


@pytest.mark.parametrize("target", [t for t in TARGETS if t.startswith("cuda")])
def test_ptx_assembles_with_ptxas(lowered, target, tmp_path):
    out_dir, manifest, _, _, _ = lowered[target]
    for k in manifest["kernels"]:
        ptx = out_dir / k["artifacts"]["ptx"]
        arch = next(line.split()[1] for line in ptx.read_text().splitlines() if line.startswith(".target"))
        assert arch.startswith(target.split(":")[1])
        cubin = tmp_path / f"{k['id']}.cubin"
        run = subprocess.run([str(PTXAS), f"-arch={arch}", str(ptx), "-o", str(cubin)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert elf_header(cubin)[0] == EM_CUDA and elf_header(out_dir / k["artifacts"]["cubin"])[0] == EM_CUDA


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="no CUDA toolkit ptxas on PATH")
def test_sm80_ptx_also_assembles_with_the_cuda_toolkit(lowered, tmp_path):
    out_dir, manifest, _, _, _ = lowered["cuda:sm_80"]
    gemm = next(k for k in manifest["kernels"] if k["kernel"] == "moe_gemm_kernel")
    run = subprocess.run(["ptxas", "-arch=sm_80", str(out_dir / gemm["artifacts"]["ptx"]), "-o",
                          str(tmp_path / "g.cubin")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("target", MATRIX)
def test_grouped_gemm_uses_the_matrix_instructions(lowered, target):
    out_dir, manifest, _, _, _ = lowered[target]
    gemms = [k for k in manifest["kernels"] if k["kernel"] == "moe_gemm_kernel"]
    flags = {(k["constexprs"]["SWIGLU"], k["constexprs"]["A_DIV"] > 1, k["constexprs"]["SCALE"]) for k in gemms}
    assert flags == {(True, True, False), (False, False, True)}   # gate_up gathers + swiglu; down scales
    for k in gemms:
        text = (out_dir / k["artifacts"]["ptx" if target.startswith("cuda") else "amdgcn"]).read_text()
        assert text.count(MATRIX[target]) > 0
        assert k["matrix_instructions"][MATRIX[target]] == text.count(MATRIX[target])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16bit_moe_gemm_uses_the_hopper_and_blackwell_paths_and_builds_for_gfx942(tmp_path, dtype):
    """The production shape of the kernel: weights through tensor descriptors (cp.async.bulk.tensor) feeding
    wgmma on sm_90 (tcgen05.mma on sm_100); the same source compiles to an AMDGPU code object with MFMA."""
    from portable_moe.models import build_moe_layer

    graph = build_moe_layer(preset("debug").with_(dtype=dtype, shared_ffn=0))
    for target, instr in (("cuda:sm_90", ("wgmma", "cp.async.bulk.tensor")), ("rocm:gfx942", ("v_mfma",)),
                          ("cuda:sm_100", ("tcgen05.mma", "cp.async.bulk.tensor"))):
        options = TritonOptions(cache_dir=str(tmp_path / "cache"), tokens=4096)
        manifest = TritonBackend().lower(graph, target, tmp_path / target.replace(":", "_"), options)
        gemms = [k for k in manifest["kernels"] if k["kernel"] == "moe_gemm_kernel"]
        assert len(gemms) == 2 and all(k["constexprs"]["W_TMA"] == target.startswith("cuda") for k in gemms)
        for k in gemms:
            asm = tmp_path / target.replace(":", "_") / k["artifacts"]["ptx" if "cuda" in target else "amdgcn"]
            text = asm.read_text()
            assert all(text.count(i) > 0 for i in instr), f"{target} {k['id']}: {[(i, text.count(i)) for i in instr]}"
            if target.startswith("rocm"):
                binary = tmp_path / target.replace(":", "_") / k["artifacts"]["hsaco"]
                assert elf_header(binary)[0] == EM_AMDGPU and elf_header(binary)[1] & 0xFF == AMDGPU_MACH["gfx942"]


@pytest.mark.parametrize("target", [t for t in TARGETS if t.startswith("rocm")])
def test_hsaco_is_an_amdgpu_elf_for_its_gfx(lowered, target):
    out_dir, manifest, _, _, _ = lowered[target]
    for k in manifest["kernels"]:
        machine, flags = elf_header(out_dir / k["artifacts"]["hsaco"])
        assert machine == EM_AMDGPU and flags & 0xFF == AMDGPU_MACH[target.split(":")[1]]


def test_second_lower_hits_the_cache(lowered, tmp_path, monkeypatch):
    _, first, _, options, graph = lowered["cuda:sm_90"]
    assert first["cache"]["hits"] == 0

    def no_compile(*args, **kwargs):
        raise AssertionError("a cached kernel was compiled again")

    monkeypatch.setattr(lower_module.triton, "compile", no_compile)
    start = time.perf_counter()
    again = TritonBackend().lower(graph, "cuda:sm_90", tmp_path, options)
    assert time.perf_counter() - start < 1.0
    assert again["cache"]["hits"] == len(again["kernels"]) and all(k["cache_hit"] for k in again["kernels"])
    assert [k["sha256"] for k in again["kernels"]] == [k["sha256"] for k in first["kernels"]]
    assert [k["matrix_instructions"] for k in again["kernels"]] == [k["matrix_instructions"] for k in first["kernels"]]


def test_a_corrupted_cached_kernel_is_rebuilt_not_returned(lowered, tmp_path, capfd):
    out_dir, first, _, options, graph = lowered["cuda:sm_90"]
    wanted = (out_dir / first["kernels"][0]["artifacts"]["cubin"]).read_bytes()
    cubin = next(p for p in (options.cache_root("triton") / "lower").glob("*/cubin") if p.read_bytes() == wanted)
    ptx = cubin.with_name("ptx")
    damaged = bytearray(cubin.read_bytes())
    for i in range(0, min(len(damaged), 3000), 10):        # 300 flipped bytes
        damaged[i] ^= 0x5A
    cubin.write_bytes(bytes(damaged))
    ptx.write_text(ptx.read_text() + "// appended\n")
    capfd.readouterr()
    again = TritonBackend().lower(graph, "cuda:sm_90", tmp_path, options)
    assert "does not match its digest" in capfd.readouterr().err
    assert again["cache"]["hits"] == len(again["kernels"]) - 1
    assert [k["sha256"] for k in again["kernels"]] == [k["sha256"] for k in first["kernels"]]
    for k in again["kernels"]:
        assert (tmp_path / k["artifacts"]["cubin"]).read_bytes() == (out_dir / k["artifacts"]["cubin"]).read_bytes()


def test_unknown_target_and_stage_are_clear_errors(tmp_path):
    with pytest.raises(BackendError, match="supported: cuda:sm_80"):
        TritonBackend().lower(build_model(preset("debug")), "cuda:sm_75", tmp_path, TritonOptions())
    with pytest.raises(BackendError, match="unknown stage"):
        TritonOptions(stages=("sass",))


def test_interpreting_on_the_cpu_leaves_triton_able_to_compile(tmp_path, monkeypatch):
    import torch

    from portable_moe.backends.triton import launch
    from portable_moe.models import build_moe_layer

    launch.router(torch.randn(3, 8), torch.randn(4, 8), None, None, top_k=2, scoring="softmax", num_groups=2,
                  top_groups=1, group_score="top2_sum", normalize=True, scaling=1.0)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))     # a real compile, not Triton's cache
    graph = build_moe_layer(preset("debug"))
    manifest = TritonBackend().lower(graph, "rocm:gfx942", tmp_path / "out", TritonOptions(cache_dir=str(tmp_path)))
    assert manifest["cache"]["misses"] == len(manifest["kernels"]) > 0


@pytest.mark.parametrize("target", ["cuda:sm_90", "rocm:gfx942"])
def test_backward_kernels_lower_with_matrix_instructions(lowered, target, tmp_path):
    """The training kernels cross-compile too; forward instances come from the fixture's cache."""
    _, _, _, options, graph = lowered[target]
    manifest = TritonBackend().lower(graph, target, tmp_path, dataclasses.replace(options, backward=True))
    backward = {k["kernel"]: k for k in manifest["kernels"] if k["pass"] == "backward"}
    assert set(backward) == {"moe_gemm_kernel", "bucket_kernel", "align_kernel", "grouped_gemm_dw_kernel",
                             "swiglu_bwd_kernel", "combine_bwd_kernel", "inverse_kernel", "combine_kernel"}
    assert backward["moe_gemm_kernel"]["constexprs"]["SWIGLU"] is False   # recomputes gate_up; dx
    training = {k["kernel"] for k in manifest["kernels"] if k["pass"] == "training"}
    assert training >= {"dispatch_kernel", "combine_kernel"}
    for name in ("moe_gemm_kernel", "grouped_gemm_dw_kernel"):
        k = backward[name]
        text = (tmp_path / k["artifacts"]["ptx" if target.startswith("cuda") else "amdgcn"]).read_text()
        assert text.count(MATRIX[target]) > 0, f"{name} has no {MATRIX[target]}"
        binary = tmp_path / k["artifacts"]["cubin" if target.startswith("cuda") else "hsaco"]
        assert elf_header(binary)[0] == (EM_CUDA if target.startswith("cuda") else EM_AMDGPU)
    assert all(k["cache_hit"] for k in manifest["kernels"] if k["pass"] == "forward")
