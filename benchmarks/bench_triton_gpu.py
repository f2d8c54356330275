"""GPU benchmark of the Triton MoE layer against what a transformers user already has, side by side in one
run (bf16, same weights): ours (fused MoE FFN: rows aligned per expert on the device, gather in gate_up,
routing weight in the down GEMM, combine a sum), a torch._grouped_mm layer, a per-expert loop of matmuls,
and transformers' experts implementations (eager / grouped_mm / batched_mm), for Mixtral-8x7B,
Qwen3-30B-A3B and DeepSeek-V3 expert shapes, with the card's dense bf16 matmul rate and copy bandwidth.

    python benchmarks/bench_triton_gpu.py [--tokens 1 32 128 512 4096 16384] [--quick] [--autotune] [--out F.md]

Table 1: the experts' compute (routing given): ms per implementation, ours vs the best other, and for
decode the time to read the selected experts' weights once at the measured bandwidth. Table 2: the gate_up
grouped GEMM alone, TFLOP/s and % of dense. Exit status 2 with a message on a machine without a CUDA GPU.
Legend: T tokens, K top-k, R = T*K rows, E experts, H hidden, F expert FFN width."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SHAPES = {"mixtral-8x7b": dict(E=8, K=2, H=4096, F=14336), "qwen3-30b-a3b": dict(E=128, K=8, H=2048, F=768),
          "deepseek-v3": dict(E=256, K=8, H=7168, F=2048)}
TOKENS, QUICK = (1, 32, 128, 512, 4096, 16384), (1, 128, 4096)
OTHERS = ("torch._grouped_mm", "per-expert loop", "hf eager", "hf grouped_mm", "hf batched_mm")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=None)
    p.add_argument("--quick", action="store_true", help=f"tokens {QUICK} only (the GPU check uses this)")
    p.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--out", type=Path, help="also write the markdown tables to this file")
    p.add_argument("--autotune", action="store_true", help="tune our GEMM tiles first (the launched variants)")
    p.add_argument("--cache-dir", default=None, help="tuned-config cache (default: triton/ in the cache dir)")
    return p.parse_args(argv)


def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=50)


def ceilings(torch) -> tuple[float, float]:
    """Dense bf16 matmul TFLOP/s (8192^3) and device copy bandwidth GB/s (2 GiB read + written)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    tflops = 2 * 8192 ** 3 / bench(lambda: a @ a) / 1e9
    buf = torch.empty(2 ** 30, device="cuda", dtype=torch.int16)
    return tflops, 2 * buf.numel() * 2 / bench(lambda: buf.clone()) / 1e6


class Layer:
    """One MoE layer's experts with random bf16 weights, routed tokens, and every implementation of it."""

    def __init__(self, torch, shape: dict, T: int, cache, autotune: bool):
        from portable_moe.backends.triton import launch

        self.torch, self.launch, self.T, self.s = torch, launch, T, shape
        E, K, H, F = shape["E"], shape["K"], shape["H"], shape["F"]
        g = torch.Generator(device="cuda").manual_seed(T)
        self.x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16, generator=g)
        self.idx = torch.rand(T, E, device="cuda", generator=g).topk(K, dim=-1).indices
        self.w = torch.rand(T, K, device="cuda", generator=g).softmax(-1).to(torch.bfloat16)
        self.gate_up = torch.randn(E, 2 * F, H, device="cuda", dtype=torch.bfloat16, generator=g) * H ** -0.5
        self.down = torch.randn(E, H, F, device="cuda", dtype=torch.bfloat16, generator=g) * F ** -0.5
        self.cfg_gu, self.cfg_d, self.notes = self.configs(cache, autotune)

    def configs(self, cache, autotune):
        from portable_moe.backends.triton import tuning

        props = self.torch.cuda.get_device_properties(0)
        arch = f"sm_{props.major}{props.minor}"
        limits, R = tuning.limits_for(arch, "cuda:0"), self.T * self.s["K"]
        per_expert = -(-R // self.s["E"])
        out, notes = [], []
        for w, swiglu, gather in ((self.gate_up, True, True), (self.down, False, False)):
            var = tuning.variant(swiglu, gather)
            if autotune:
                tuning.autotune(cache, arch, var, "bfloat16", w.shape[1], w.shape[2], per_expert,
                                lambda c, w=w, s=swiglu, a=gather: self.gemm(c, w, s, a), limits)
            cfg, note = cache.get(arch, var, "bfloat16", w.shape[1], w.shape[2], per_expert, limits)
            out.append(cfg)
            notes.append(f"{var} {cfg.block_m}x{cfg.block_n}x{cfg.block_k}/w{cfg.num_warps}/s{cfg.num_stages}"
                         + (" untuned" if note else ""))
        return out[0], out[1], "; ".join(notes)

    def gemm(self, cfg, w, swiglu, gather):
        torch, R = self.torch, self.T * self.s["K"]
        slots, blocks = self.launch.moe_align(self.idx.reshape(-1), self.s["E"], cfg.block_m)
        y = torch.empty(R, w.shape[1] // (2 if swiglu else 1), device="cuda", dtype=torch.bfloat16)
        a = self.x if gather else torch.zeros(R, w.shape[2], device="cuda", dtype=torch.bfloat16)
        return self.launch.moe_gemm(a, w, y, slots, blocks, cfg, a_div=self.s["K"] if gather else 1, swiglu=swiglu)

    def ours(self):
        return self.launch.moe_ffn(self.x, self.idx, self.w, self.gate_up, self.down, self.cfg_gu, self.cfg_d)

    def sorted_rows(self):
        torch = self.torch
        flat = self.idx.reshape(-1)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.s["E"])
        return order, counts

    def grouped_mm(self):
        torch, F = self.torch, self.s["F"]
        order, counts = self.sorted_rows()
        rows = self.x[order // self.s["K"]]
        offs = counts.cumsum(0).to(torch.int32)
        gu = torch._grouped_mm(rows, self.gate_up.transpose(1, 2), offs=offs)
        h = torch.nn.functional.silu(gu[:, :F]) * gu[:, F:]
        y = torch._grouped_mm(h, self.down.transpose(1, 2), offs=offs) * self.w.reshape(-1)[order, None]
        return torch.zeros_like(self.x).index_add_(0, order // self.s["K"], y)

    def loop(self):
        torch, F = self.torch, self.s["F"]
        out = torch.zeros_like(self.x)
        order, counts = self.sorted_rows()
        bounds = [0, *counts.cumsum(0).tolist()]
        for e, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            if hi > lo:
                pairs = order[lo:hi]
                gu = self.x[pairs // self.s["K"]] @ self.gate_up[e].T
                y = (torch.nn.functional.silu(gu[:, :F]) * gu[:, F:]) @ self.down[e].T
                out.index_add_(0, pairs // self.s["K"], y * self.w.reshape(-1)[pairs, None])
        return out

    def transformers(self, implementation: str):
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralExperts

        cfg = MixtralConfig(hidden_size=self.s["H"], intermediate_size=self.s["F"], num_local_experts=self.s["E"],
                            num_experts_per_tok=self.s["K"])
        cfg._experts_implementation = implementation
        with self.torch.device("meta"):
            experts = MixtralExperts(cfg)
        experts.gate_up_proj = self.torch.nn.Parameter(self.gate_up, requires_grad=False)
        experts.down_proj = self.torch.nn.Parameter(self.down, requires_grad=False)
        return lambda: experts(self.x, self.idx, self.w)


def measure(torch, name, shape, T, cache, autotune, dense, bandwidth) -> tuple[str, str]:
    layer = Layer(torch, shape, T, cache, autotune)
    K, H, F = shape["K"], shape["H"], shape["F"]
    impls = {"ours": layer.ours, "torch._grouped_mm": layer.grouped_mm, "per-expert loop": layer.loop,
             **{f"hf {i}": layer.transformers(i) for i in ("eager", "grouped_mm", "batched_mm")}}
    ms = {}
    for label, fn in impls.items():
        try:
            ms[label] = bench(fn)
        except torch.OutOfMemoryError:
            ms[label] = float("nan")
        torch.cuda.empty_cache()
    want = layer.grouped_mm().double()
    err = ((layer.ours().double() - want).norm() / want.norm()).item()
    best = min((v for k, v in ms.items() if k != "ours" and v == v), default=float("nan"))
    selected = len(torch.unique(layer.idx)) * 3 * H * F * 2
    cells = " | ".join(f"{ms[k]:.3f}" if ms[k] == ms[k] else "oom" for k in impls)
    row = (f"| {name} | {T} | {cells} | {best / ms['ours']:.2f}x | {selected / bandwidth / 1e6:.3f} | {err:.1e} | "
           f"{layer.notes} |")
    R, flops = T * K, 2 * T * K * 2 * F * H
    t_gu = bench(lambda: layer.gemm(layer.cfg_gu, layer.gate_up, True, True))
    order, counts = layer.sorted_rows()
    rows, offs = layer.x[order // K], counts.cumsum(0).to(torch.int32)
    t_gmm = bench(lambda: torch._grouped_mm(rows, layer.gate_up.transpose(1, 2), offs=offs))
    bounds = [0, *counts.cumsum(0).tolist()]
    t_loop = bench(lambda: [rows[a:b] @ w.T for a, b, w in zip(bounds, bounds[1:], layer.gate_up.unbind(0)) if b > a])
    tf = [flops / t / 1e9 for t in (t_gu, t_gmm, t_loop)]
    gemm = f"| {name} | {T} | {R} | " + " | ".join(f"{v:.1f} ({100 * v / dense:.0f}%)" for v in tf) + " |"
    return row, gemm


HEAD_LAYER = ("| model | tokens | ours ms | " + " | ".join(f"{o} ms" for o in OTHERS)
              + " | best other / ours | read selected weights once, ms | ours vs grouped_mm (rel.) | our tiles |\n"
              + "|---" * 12 + "|")
HEAD_GEMM = ("| model | tokens | rows | ours gate_up TFLOP/s (% dense) | torch._grouped_mm | per-expert loop |\n"
             + "|---" * 6 + "|")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_triton_gpu: no CUDA or ROCm GPU on this machine (torch.cuda.is_available() is False); "
              "run it on a GPU machine", file=sys.stderr)
        return 2
    import transformers
    import triton

    from portable_moe.backends.triton import TritonOptions, tuning

    cache = tuning.TuningCache(TritonOptions(cache_dir=args.cache_dir).cache_path())
    dense, bandwidth = ceilings(torch)
    tokens = args.tokens or (QUICK if args.quick else TOKENS)
    lines = [f"# Triton MoE layer on {torch.cuda.get_device_name(0)}, bf16 (torch {torch.__version__}, triton "
             f"{triton.__version__}, transformers {transformers.__version__})", "",
             f"Dense bf16 matmul 8192^3: {dense:.1f} TFLOP/s; device copy bandwidth {bandwidth:.0f} GB/s", ""]
    layer_rows, gemm_rows = [HEAD_LAYER], [HEAD_GEMM]
    print("\n".join(lines + [HEAD_LAYER]), flush=True)
    for name in args.models:
        for T in tokens:
            try:
                row, gemm = measure(torch, name, SHAPES[name], T, cache, args.autotune, dense, bandwidth)
            except torch.OutOfMemoryError:
                row = gemm = f"| {name} | {T} | skipped: out of GPU memory |"
            torch.cuda.empty_cache()
            print(row, flush=True)
            layer_rows.append(row)
            gemm_rows.append(gemm)
    print("\n" + "\n".join(gemm_rows), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines + layer_rows + [""] + gemm_rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
