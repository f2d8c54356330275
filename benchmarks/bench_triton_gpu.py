"""GPU benchmark of the Triton backend: the grouped GEMM and a whole MoE layer (bf16, Mixtral-8x7B and
DeepSeek-V3 layer shapes, 1 to 16k tokens) against torch on the same GPU (torch._grouped_mm when it
exists, and a per-expert loop) and against the card's measured dense bf16 matmul rate.

    python benchmarks/bench_triton_gpu.py [--tokens 1 128 1024 4096 16384] [--out results.md] [--autotune]

Runs on any CUDA or ROCm machine in a few minutes; exits with status 2 and a message on a machine
without one. Target: the grouped GEMM at large token counts reaches >= 70% of the dense bf16 rate.
Legend: T tokens, K top-k, R = T*K rows, E experts, H hidden, F expert FFN width."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SHAPES = {"mixtral-8x7b": dict(E=8, K=2, H=4096, F=14336), "deepseek-v3": dict(E=256, K=8, H=7168, F=2048)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 128, 1024, 4096, 16384])
    p.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--out", type=Path, help="also write the markdown table to this file")
    p.add_argument("--autotune", action="store_true", help="tune the grouped GEMM tiles first (slower)")
    p.add_argument("--cache-dir", default=None, help="tuned-config cache (default ~/.cache/portable_moe/triton)")
    return p.parse_args(argv)


def device_arch(torch) -> str:
    props = torch.cuda.get_device_properties(0)
    if torch.version.hip:
        return str(props.gcnArchName).split(":")[0]
    return f"sm_{props.major}{props.minor}"


def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=50)


def dense_tflops(torch) -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192 ** 3 / bench(lambda: a @ b) / 1e9


def routing(torch, T, E, K, H):
    from portable_moe.backends.triton import launch

    x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
    router_w = torch.randn(E, H, device="cuda", dtype=torch.bfloat16) * 0.02
    weights, idx, _ = launch.router(x, router_w, None, None, top_k=K, scoring="softmax", num_groups=1, top_groups=1,
                                    group_score="max", normalize=True, scaling=1.0)
    rows, offsets, order = launch.dispatch(x, idx, num_experts=E)
    return x, router_w, weights, rows, offsets, order


def torch_grouped(torch, x, w_ENK, offsets):
    if hasattr(torch, "_grouped_mm"):
        return lambda: torch._grouped_mm(x, w_ENK.transpose(1, 2), offs=offsets[1:].to(torch.int32))
    return None


def torch_loop(x, w_ENK, offsets):
    bounds = offsets.tolist()
    return lambda: [x[a:b] @ w.T for a, b, w in zip(bounds, bounds[1:], w_ENK.unbind(0)) if b > a]


def layer_triton(launch, x, router_w, gate_up, down, cfg_gu, cfg_d, E, K):
    def run():
        weights, idx, _ = launch.router(x, router_w, None, None, top_k=K, scoring="softmax", num_groups=1,
                                        top_groups=1, group_score="max", normalize=True, scaling=1.0)
        rows, offsets, order = launch.dispatch(x, idx, num_experts=E)
        h = launch.grouped_matmul(rows, gate_up, offsets, cfg_gu, swiglu=True)
        return launch.combine(launch.grouped_matmul(h, down, offsets, cfg_d), order, weights)
    return run


def layer_torch(torch, ref, x, router_w, gate_up, down, E, K):
    def run():
        weights, idx, _ = ref.router(x, router_w, top_k=K, scoring="softmax", num_groups=1, top_groups=1,
                                     group_score="max", normalize=True, scaling=1.0)
        rows, offsets, order = ref.dispatch(x, idx, num_experts=E)
        offs = offsets[1:].to(torch.int32)
        h = ref.swiglu(torch._grouped_mm(rows, gate_up.transpose(1, 2), offs=offs))
        return ref.combine(torch._grouped_mm(h, down.transpose(1, 2), offs=offs), order, weights)
    return run


def measure(torch, name, shape, T, arch, cache, autotune, dense):
    from portable_moe.backends.triton import launch, tuning
    from portable_moe.ir import meanings as ref

    E, K, H, F = shape["E"], shape["K"], shape["H"], shape["F"]
    x, router_w, _, rows, offsets, _ = routing(torch, T, E, K, H)
    gate_up = torch.randn(E, 2 * F, H, device="cuda", dtype=torch.bfloat16) * 0.02
    down = torch.randn(E, H, F, device="cuda", dtype=torch.bfloat16) * 0.02
    R = rows.shape[0]
    if autotune:
        tuning.autotune(cache, arch, lambda c: launch.grouped_matmul(rows, gate_up, offsets, c), "bfloat16",
                        2 * F, H, R)
    cfg_gu, note_gu = cache.get(arch, "bfloat16", 2 * F, H, R)
    cfg_d, _ = cache.get(arch, "bfloat16", H, F, R)
    flops = 2 * R * 2 * F * H
    t_tri = bench(lambda: launch.grouped_matmul(rows, gate_up, offsets, cfg_gu))
    grouped = torch_grouped(torch, rows, gate_up, offsets)
    t_gmm = bench(grouped) if grouped else float("nan")
    t_loop = bench(torch_loop(rows, gate_up, offsets))
    got = launch.grouped_matmul(rows, gate_up, offsets, cfg_gu).float()
    want = ref.grouped_matmul(rows, gate_up, offsets).float()
    err = ((got - want).norm() / want.norm().clamp_min(1e-30)).item()
    t_layer = bench(layer_triton(launch, x, router_w, gate_up, down, cfg_gu, cfg_d, E, K))
    t_layer_torch = bench(layer_torch(torch, ref, x, router_w, gate_up, down, E, K)) if grouped else float("nan")
    tf = flops / t_tri / 1e9
    return (f"| {name} | {T} | {R} | {tf:.1f} | {100 * tf / dense:.0f}% | {flops / t_gmm / 1e9:.1f} | "
            f"{flops / t_loop / 1e9:.1f} | {t_layer:.3f} | {t_layer_torch:.3f} | {err:.1e} | "
            f"{'untuned' if note_gu else 'tuned'} {cfg_gu.block_m}x{cfg_gu.block_n}x{cfg_gu.block_k} |")


HEADER = ("| model | tokens | rows | triton gate_up TFLOP/s | % of dense | torch._grouped_mm TFLOP/s | "
          "per-expert loop TFLOP/s | triton layer ms | torch layer ms | rel. error | tiles |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_triton_gpu: no CUDA or ROCm GPU on this machine (torch.cuda.is_available() is False); "
              "run it on a GPU machine", file=sys.stderr)
        return 2
    from portable_moe.backends.triton import tuning

    arch = device_arch(torch)
    cache = tuning.TuningCache(Path(args.cache_dir).expanduser() if args.cache_dir else
                               Path.home() / ".cache/portable_moe/triton")
    dense = dense_tflops(torch)
    lines = [f"# Triton backend on {torch.cuda.get_device_name(0)} ({arch}), bf16", "",
             f"Dense bf16 matmul 8192^3 (torch): {dense:.1f} TFLOP/s", "", HEADER]
    print("\n".join(lines), flush=True)
    for name in args.models:
        for T in args.tokens:
            try:
                line = measure(torch, name, SHAPES[name], T, arch, cache, args.autotune, dense)
            except torch.OutOfMemoryError:
                line = f"| {name} | {T} | skipped: out of GPU memory |"
            torch.cuda.empty_cache()
            print(line, flush=True)
            lines.append(line)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
