"""The one place that imports TVM: TVM's thread pool reads TVM_NUM_THREADS when it starts, and it
defaults to one thread, so the variable is set (to every core) before the first import."""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

import tvm  # noqa: E402

TVM_VERSION = tvm.__version__


def host_cpu() -> str:
    """LLVM's name for this CPU (znver5, skylake-avx512, ...); without it the llvm target is ~4.5x slower."""
    return str(tvm.target.codegen.llvm_get_system_cpu())


def cpu_target() -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": os.cpu_count() or 1})


def rocm_path() -> str | None:
    """ROCM_PATH for TVM's ROCm codegen: the folder holding amdgcn/bitcode (Debian's rocm-device-libs puts
    it in the multiarch library folder). Set here, once, when it is not set already."""
    import glob

    if os.environ.get("ROCM_PATH"):
        return os.environ["ROCM_PATH"]
    for bitcode in glob.glob("/usr/lib/*/amdgcn/bitcode") + glob.glob("/opt/rocm*/amdgcn/bitcode"):
        os.environ["ROCM_PATH"] = str(os.path.dirname(os.path.dirname(bitcode)))
        return os.environ["ROCM_PATH"]
    return None
