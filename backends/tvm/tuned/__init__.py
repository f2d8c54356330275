"""The shipped tuned-tile database (cpu.json): CPU grouped-GEMM tiles measured per host CPU (LLVM's
name), shape and TVM version by backends/tvm/tune.py. A shape or CPU not in it gets the default tile,
and the executable says so (placement() shows 'default tile')."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from ..gemm_kernels import CpuTile

DB = Path(__file__).with_name("cpu.json")


@cache
def entries() -> dict:
    if not DB.exists():
        return {}
    data = json.loads(DB.read_text())
    return {entry_key(e["tvm"], e["mcpu"], e["op"], e["E"], e["N"], e["K"]): CpuTile(**e["tile"])
            for e in data["entries"]}


def entry_key(tvm: str, mcpu: str, op: str, E: int, N: int, K: int) -> str:
    return f"{tvm}|{mcpu}|{op}|{E}x{N}x{K}"


def tile_for(op: str, E: int, N: int, K: int, use_tuned: bool = True) -> tuple[CpuTile, str]:
    from ..env import TVM_VERSION, host_cpu

    if use_tuned:
        tile = entries().get(entry_key(TVM_VERSION, host_cpu(), op, E, N, K))
        if tile is not None:
            return tile, "tuned"
    return CpuTile(), "default"
