"""The one place that imports TVM, and the host facts its CPU and ROCm code generation need. Nothing
here reads or writes the environment: the thread count and the ROCm folder come from TVMOptions."""

from __future__ import annotations

import glob
import os
import threading
from functools import cache

import tvm

TVM_VERSION = tvm.__version__
CONFIGURED = threading.local()


@cache
def host_cpu() -> str:
    """LLVM's name for this CPU (znver5, skylake-avx512, ...); without it the llvm target is ~4.5x slower."""
    return str(tvm.target.codegen.llvm_get_system_cpu())


def cpu_target() -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": len(os.sched_getaffinity(0))})


def use_threads(count: int):
    """Sizes TVM's thread pool of the calling thread (0: every core this process may use). Without it
    TVM runs one thread (it guesses that half the logical cores are hyper-threads)."""
    cores = sorted(os.sched_getaffinity(0))
    count = min(count or len(cores), len(cores))
    if getattr(CONFIGURED, "count", None) != count:
        tvm.get_global_func("runtime.config_threadpool")(1, count, [str(c) for c in cores[:count]])
        CONFIGURED.count = count


def rocm_bitcode(given: str | None) -> str | None:
    """The ROCm device-library bitcode folder: `given` (Options.rocm_path), else where Debian's
    rocm-device-libs or a ROCm install puts it. TVM's ROCm codegen is told through its callback."""
    found = [given] if given else [os.path.dirname(os.path.dirname(b)) for b in
                                   glob.glob("/usr/lib/*/amdgcn/bitcode") + glob.glob("/opt/rocm*/amdgcn/bitcode")]
    from tvm.support import rocm

    for root in found:
        bitcode = os.path.join(root, "amdgcn", "bitcode", "")
        if os.path.isdir(bitcode):
            def bitcode_path(rocdl_dir=None, where=bitcode):
                return rocm.callback_rocm_bitcode_path(where)

            tvm.register_global_func("tvm_callback_rocm_bitcode_path", bitcode_path, override=True)
            return root
    return None


def target_for(kind: str) -> tvm.target.Target:
    """The target the executable builds for on a 'cpu' or 'opencl' device."""
    return cpu_target() if kind == "cpu" else tvm.target.Target({"kind": "opencl"}, host={"kind": "llvm"})
