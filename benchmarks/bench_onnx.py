"""ONNX Runtime vs torch eager on one MoE layer, side by side in one run (CPU, float32).

Variants: the torch eager baseline of portable_moe.bench (a Mixtral-style loop over experts),
onnxruntime on a plain-torch MoE layer exported by torch.onnx.export(dynamo=True), and onnxruntime
on our IR graph exported by portable_moe.ir.onnx; `portable-moe bench` cannot express the
torch.onnx.export variant (an ONNX model exported from torch code, not from our IR). All three use the
same weights and run side by side (interleaved rounds of the one timer, median reported as in
`portable-moe bench`); GFLOP/s counts only the expert GEMMs: 2*T*K*(H*2F + F*H).

    python benchmarks/bench_onnx.py [--threads 2] [--repeat 5] [--markdown benchmarks/results/onnx.md]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from torch_moe import TorchMoE, export_torch_moe  # noqa: E402

from portable_moe.bench.eager import eager_loop  # noqa: E402
from portable_moe.bench.report import load, section  # noqa: E402
from portable_moe.ir.onnx import export  # noqa: E402
from portable_moe.models import MoEConfig, build_moe_layer  # noqa: E402
from portable_moe.timing import side_by_side_ms  # noqa: E402

SHAPES = [  # hidden, expert_ffn, experts, top_k, tokens
    (1024, 1408, 16, 2, 2048),
    (512, 1792, 8, 2, 4096),
]


def ir_params(m: TorchMoE) -> dict[str, np.ndarray]:
    gate = torch.stack([e.gate.weight for e in m.experts])
    up = torch.stack([e.up.weight for e in m.experts])
    down = torch.stack([e.down.weight for e in m.experts])
    return {"router.weight": m.router.weight.detach().numpy(),
            "experts.gate_up": torch.cat([gate, up], dim=1).detach().numpy(),
            "experts.down": down.detach().numpy()}


def session(model_bytes: bytes, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def bench_shape(hidden, ffn, experts, top_k, tokens, threads, repeat) -> list[dict]:
    torch.manual_seed(0)
    m = TorchMoE(hidden, ffn, experts, top_k).eval()
    x = torch.randn(tokens, hidden)
    flops = 2 * tokens * top_k * (hidden * 2 * ffn + ffn * hidden)
    cfg = MoEConfig(name="bench", hidden=hidden, expert_ffn=ffn, experts=experts, top_k=top_k)
    arrays = ir_params(m)
    params = {k: torch.from_numpy(v) for k, v in arrays.items()}
    with torch.no_grad():
        want = eager_loop(cfg, params, x).numpy()
    ours = session(export(build_moe_layer(cfg), arrays).SerializeToString(), threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_torch_moe(m, Path(tmp) / "torch_moe.onnx")
        theirs = session(path.read_bytes(), threads)
    feed = x.numpy()
    variants = {
        "torch eager (loop)": lambda: eager_loop(cfg, params, x),
        "onnxruntime, torch.onnx.export(dynamo) loop": lambda: theirs.run(None, {theirs.get_inputs()[0].name: feed}),
        "onnxruntime, portable_moe export": lambda: ours.run(None, {"x": feed}),
    }
    with torch.no_grad():
        times = side_by_side_ms(variants, repeat)
    rows = []
    for name, fn in variants.items():
        seconds = statistics.median(times[name]) / 1e3
        with torch.no_grad():
            out = fn()
        out = out.numpy() if isinstance(out, torch.Tensor) else out[0]
        rows.append({"shape": f"{hidden}->{ffn}, {experts} experts, top-{top_k}, {tokens} tokens",
                     "variant": name, "ms": seconds * 1e3, "gflops": flops / seconds / 1e9,
                     "max_err": float(np.abs(out - want).max())})
    return rows


def markdown(rows: list[dict], threads: int, before: str, command: str) -> str:
    body = [f"{threads} threads; GFLOP/s counts the expert GEMMs only: 2*T*K*(H*2F + F*H); median of the "
            "interleaved rounds; max_err: largest difference from torch eager's output", "",
            "| shape | variant | ms | GFLOP/s | max_err |", "|---|---|---:|---:|---:|"]
    body += [f"| {r['shape']} | {r['variant']} | {r['ms']:.1f} | {r['gflops']:.0f} | {r['max_err']:.1e} |"
             for r in rows]
    return section("ONNX Runtime vs torch eager: one MoE layer forward, float32", command, body, "cpu", before)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--markdown", default=None, help="write the results table here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = load()
    rows = [r for shape in SHAPES for r in bench_shape(*shape, args.threads, args.repeat)]
    text = markdown(rows, args.threads, before, shlex.join(["python", "benchmarks/bench_onnx.py", *sys.argv[1:]]))
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
