"""TVM CPU MoE layer vs torch eager, side by side in one run, fp32.

For each shape: torch eager (a Hugging Face-style per-expert loop, and a sorted/grouped version),
the TVM backend's whole layer (router, dispatch, fused gate_up+SwiGLU, down, combine), its expert
GEMMs alone, and the CPU's fp32 matmul rate measured now (torch matmul of the same size).
Writes a Markdown table (default benchmarks/results/tvm.md).

Legend: T tokens, H hidden, F expert FFN width, E experts, K top-k.
Usage: python benchmarks/bench_tvm_cpu.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from portable_moe.backends.devices import cpu_device, cpu_name
from portable_moe.backends.tvm import TVMBackend
from portable_moe.ir import meanings as ref_ops
from portable_moe.models import build_moe_layer, init_params, preset

SHAPES = [  # (H, F, E, K, T)
    (1024, 1408, 16, 2, 2048),
    (512, 1792, 8, 2, 4096),
]


def interleaved_best(fns: dict, repeat: int) -> dict:
    """Best time of each variant over `repeat` rounds; each round runs every variant once, so load from
    other jobs on a shared machine falls on all of them alike."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def hf_loop(x_TH, p):
    """Hugging Face Mixtral-style: router, then a Python loop over experts with index_add."""
    weights_TK, idx_TK, _ = ref_ops.router(x_TH, p["router.weight"], top_k=p["K"], scoring="softmax", num_groups=1,
                                           top_groups=1, group_score="max", normalize=True, scaling=1.0)
    out = torch.zeros_like(x_TH)
    for e, (gu_NH, d_HF) in enumerate(zip(p["gate_up"], p["down"])):
        tok, slot = torch.where(idx_TK == e)
        if tok.numel() == 0:
            continue
        g, u = F.linear(x_TH[tok], gu_NH).chunk(2, -1)
        y = F.linear(F.silu(g) * u, d_HF) * weights_TK[tok, slot, None]
        out.index_add_(0, tok, y)
    return out


def sorted_grouped(x_TH, p):
    """Sorted by expert: one gather, contiguous per-expert slices, one scatter (the reference ops)."""
    weights_TK, idx_TK, _ = ref_ops.router(x_TH, p["router.weight"], top_k=p["K"], scoring="softmax", num_groups=1,
                                           top_groups=1, group_score="max", normalize=True, scaling=1.0)
    rows, offsets, order = ref_ops.dispatch(x_TH, idx_TK, num_experts=len(p["gate_up"]))
    h = ref_ops.swiglu(ref_ops.grouped_matmul(rows, p["gate_up_END"], offsets))
    return ref_ops.combine(ref_ops.grouped_matmul(h, p["down_EHF"], offsets), order, weights_TK)


def bench_shape(H, Fw, E, K, T, repeat, cache_dir):
    cfg = preset("debug").with_(name="bench", hidden=H, expert_ffn=Fw, experts=E, top_k=K)
    graph = build_moe_layer(cfg)
    params = init_params(graph, 0)
    x = torch.randn(T, H)
    backend = TVMBackend()
    t0 = time.perf_counter()
    exe = backend.compile(graph, cpu_device(), backend.Options(cache_dir=cache_dir, threads=torch.get_num_threads()))
    compile_s = time.perf_counter() - t0
    p = {"router.weight": params["router.weight"], "K": K, "gate_up": params["experts.gate_up"].unbind(0),
         "down": params["experts.down"].unbind(0), "gate_up_END": params["experts.gate_up"],
         "down_EHF": params["experts.down"]}
    out = exe.run({"x": x}, params)[0]
    err = (out - hf_loop(x, p)).abs().max().item() / out.abs().max().item()
    gmm_steps = [(s, c) for s, c in zip(exe.steps, exe.calls) if s.op == "grouped_matmul"]
    rows = torch.randn(T * K, H)
    offsets = torch.linspace(0, T * K, E + 1).round().long()
    flops = 2 * T * K * (H * 2 * Fw + Fw * H)

    def gemms():
        h = gmm_steps[0][0].run(gmm_steps[0][1], rows, params["experts.gate_up"], offsets)[0]
        gmm_steps[1][0].run(gmm_steps[1][1], h, params["experts.down"], offsets)

    a, b = torch.randn(T * K // E * 4, H), torch.randn(2 * Fw, H)
    times = interleaved_best({
        "hf_loop": lambda: hf_loop(x, p),
        "torch_sorted": lambda: sorted_grouped(x, p),
        "tvm_layer": lambda: exe.run({"x": x}, params),
        "tvm_gemms": gemms,
        "matmul": lambda: a @ b.T,
    }, repeat)
    matmul_gflops = 2 * a.shape[0] * a.shape[1] * b.shape[0] / times["matmul"] / 1e9
    tuning = sorted({s.tuning for s, _ in gmm_steps})
    return {"shape": f"{H}->{Fw}, E={E}, K={K}, T={T}", "compile_s": compile_s, "err": err, "flops": flops,
            "times": times, "matmul_gflops": matmul_gflops, "tuning": ", ".join(tuning)}


def table(results, threads: int, load: float) -> str:
    lines = [
        f"## {threads} thread(s): torch.set_num_threads({threads}), TVMOptions(threads={threads})\n",
        f"Load average before this table: {load:.1f} (a shared machine: other jobs ran alongside).\n",
        "| shape | HF loop GF/s | torch sorted GF/s | TVM layer GF/s | TVM / best torch | TVM GEMMs GF/s | "
        "fp32 matmul GF/s (now) | GEMMs / matmul | tile | compile s | rel. err vs HF loop |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t, f = r["times"], r["flops"]
        g = {k: f / v / 1e9 for k, v in t.items() if k != "matmul"}
        best_torch = max(g["hf_loop"], g["torch_sorted"])
        lines.append(f"| {r['shape']} | {g['hf_loop']:.0f} | {g['torch_sorted']:.0f} | {g['tvm_layer']:.0f} | "
                     f"{g['tvm_layer'] / best_torch:.2f}x | {g['tvm_gemms']:.0f} | {r['matmul_gflops']:.0f} | "
                     f"{g['tvm_gemms'] / r['matmul_gflops']:.0%} | {r['tuning']} | {r['compile_s']:.1f} | "
                     f"{r['err']:.1e} |")
    lines.append("\nGF/s counts the expert GEMM flops only (2*T*K*(H*2F + F*H)) for every column, so the "
                 "layer columns compare whole layers on one scale. 'tile' says where the grouped-GEMM tiles came "
                 "from: the shipped table (backends/tvm/tuned/cpu.json), tuning here, or the register model.")
    return "\n".join(lines) + "\n"


HEADER = """# TVM backend on the CPU vs torch eager (fp32)

Machine: {cpu} (LLVM: {mcpu}), {n} hardware threads, torch {torch}, TVM {tvm}, Python {py}. All numbers from one run of
`python benchmarks/bench_tvm_cpu.py`: every column of a table measured side by side in one process,
best of N interleaved rounds (each round runs every variant once), steady state (compiled kernels
cached, expert weights packed once on the first call). "fp32 matmul (now)" is torch's `a @ b.T` of a
similar size in the same run; TVM's kernels are built for the host CPU (-mcpu) and use its widest FMA
vectors, which torch's BLAS does not reach here, so the GEMMs can exceed that measured rate.

"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tvm.md"))
    parser.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1, 1],
                        help="thread counts to run (all but the first in a fresh process)")
    args = parser.parse_args(argv)
    threads, rest = args.threads[0], args.threads[1:]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as cache_dir:
        results = [bench_shape(*s, repeat=2 if args.quick else 8, cache_dir=cache_dir) for s in SHAPES]
    from portable_moe.backends.tvm.env import TVM_VERSION, host_cpu

    text = HEADER.format(cpu=cpu_name(), mcpu=host_cpu(), n=os.cpu_count(), torch=torch.__version__,
                         tvm=TVM_VERSION, py=platform.python_version()) + table(results, threads, load)
    for n in rest:
        part = Path(args.out).with_suffix(f".{n}.part")
        cmd = [sys.executable, __file__, "--threads", str(n), "--out", str(part)] + (["--quick"] if args.quick else [])
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        text += "\n" + part.read_text().split("\n## ", 1)[1].join(["## ", ""])
        part.unlink()
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
