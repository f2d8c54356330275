"""`portable-moe compile MODEL [--backend B] --target T [--target T ...] -o DIR`: ahead-of-time artifacts
and a manifest.json per target, on a machine that need not have that hardware. Every target is checked
before anything is written."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path

from .. import registry
from ..backends.base import Backend, BackendError
from ..runtime.compile import options_for
from .models import add_model_args, resolve_model

DEFAULT_BACKEND = {"cuda": "triton", "rocm": "triton", "cpu": "tvm", "opencl": "tvm", "metal": "tvm",
                   "onnx": "onnxruntime", "null": "null"}


def add_parser(subparsers):
    p = subparsers.add_parser("compile", help="lower a model ahead of time for named targets (no hardware needed)")
    add_model_args(p)
    p.add_argument("--backend", help="backend that lowers (default: triton for cuda/rocm, tvm otherwise)")
    p.add_argument("--target", action="append", required=True, metavar="T",
                   help="one target per flag, e.g. cuda:sm_90, rocm:gfx942, cpu, opencl, metal (repeat the flag "
                        "for more)")
    p.add_argument("-o", "--out", required=True, help="output directory (one sub-directory per target)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                   help="a backend option, e.g. stages='[\"ttir\",\"llir\"]' (repeatable)")
    p.add_argument("--json", action="store_true", help="print the manifests as JSON")
    p.set_defaults(func=run)


def parse_options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BackendError(f"--option {pair!r} must be KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def known_targets() -> str:
    """Each lowering backend's targets, for error messages."""
    out = []
    for name in registry.backend_names():
        b = registry.load_for_listing(name)
        if isinstance(b, Backend) and b.targets and name != "null":
            out.append(f"{name}: {', '.join(b.targets)}")
    return "; ".join(out)


def planned(args) -> list[tuple[str, object, Path]]:
    """(target, backend, output folder) for every --target, all checked before anything is created."""
    out = []
    for target in args.target:
        name = args.backend or DEFAULT_BACKEND.get(target.split(":")[0])
        if name is None:
            raise BackendError(f"unknown target '{target}': a target is a kind with an architecture where it "
                               f"needs one (cuda:sm_90, rocm:gfx942, cpu, opencl, metal); known: {known_targets()}")
        backend = registry.load(name)
        backend.check_target(target)
        out.append((target, backend, Path(args.out) / target.replace(":", "_")))
    return out


def lowered_line(manifest: dict, graph, seconds: float, out_dir: Path) -> str:
    files = sum(len(k.get("artifacts", {})) for k in manifest["kernels"])
    skipped = manifest.get("not_lowered", [])
    line = (f"{manifest['backend']:8} {manifest['target']:14} {len(manifest['kernels']):3} kernels, {files:3} "
            f"artifacts in {seconds:5.1f}s -> {out_dir}/manifest.json")
    if skipped:
        ops = Counter(s["op"] for s in skipped)
        line += (f"\n{'':24}{len(skipped)} of {len(graph.nodes)} nodes not lowered "
                 f"({', '.join(f'{op} x{n}' for op, n in ops.items())}): at run time they fall back to the next "
                 f"backend for the device (the reference at least)")
    return line


def run(args) -> int:
    graph, _ = resolve_model(args.model, args.layer, args.seed, params=False)
    options = parse_options(args.option)
    manifests = []
    for target, backend, out_dir in planned(args):
        fresh = not out_dir.exists()
        t0 = time.perf_counter()
        try:
            manifest = backend.lower(graph, target, out_dir, options_for(backend, options))
        except BaseException:
            if fresh:
                shutil.rmtree(out_dir, ignore_errors=True)      # nothing half-written left behind
            raise
        manifests.append(manifest)
        if not args.json:
            print(lowered_line(manifest, graph, time.perf_counter() - t0, out_dir))
    if args.json:
        print(json.dumps(manifests, indent=1))
    return 0
