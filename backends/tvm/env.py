"""The one module that imports TVM, and the targets it builds for. The thread count and the ROCm folder
come in through TVMOptions: nothing here touches the environment."""

from __future__ import annotations

import os
import threading
from functools import cache

import tvm

TVM_VERSION = tvm.__version__
POOL = threading.local()
ARCH_FIELD = {"cuda": "arch", "rocm": "mcpu"}


@cache
def host_cpu() -> str:
    """LLVM's name for this CPU (znver5, skylake-avx512, ...); without it the llvm target is ~4.5x slower."""
    return str(tvm.target.codegen.llvm_get_system_cpu())


def target(name: str) -> tvm.target.Target:
    """The TVM target for 'cpu', 'opencl', 'metal', 'cuda:<arch>' or 'rocm:<arch>'."""
    kind, _, arch = name.partition(":")
    if kind == "cpu":
        return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": len(os.sched_getaffinity(0))})
    spec = {"kind": kind, ARCH_FIELD[kind]: arch} if arch else {"kind": kind}
    return tvm.target.Target(spec, host={"kind": "llvm"})


def use_threads(count: int):
    """Sizes the calling thread's TVM pool (0: every core this process may use); left alone, TVM takes
    half the logical cores for hyper-threads and often runs one thread."""
    cores = sorted(os.sched_getaffinity(0))
    count = min(count or len(cores), len(cores))
    if getattr(POOL, "count", None) != count:
        tvm.get_global_func("runtime.config_threadpool")(1, count, [str(c) for c in cores[:count]])
        POOL.count = count
