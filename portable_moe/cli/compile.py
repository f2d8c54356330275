"""`portable-moe compile MODEL --backend B --target T ... -o DIR`: ahead-of-time artifacts and a
manifest.json per target, on a machine that need not have that hardware."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import registry
from ..backends.base import BackendError
from ..runtime.compile import options_for
from .models import add_model_args, resolve_model

DEFAULT_BACKEND = {"cuda": "triton", "rocm": "triton", "cpu": "tvm", "opencl": "tvm", "metal": "tvm", "null": "null"}


def add_parser(subparsers):
    p = subparsers.add_parser("compile", help="lower a model ahead of time for named targets (no hardware needed)")
    add_model_args(p)
    p.add_argument("--backend", help="backend that lowers (default: triton for cuda/rocm, tvm otherwise)")
    p.add_argument("--target", action="append", required=True,
                   help="e.g. cuda:sm_90, rocm:gfx942, cpu, opencl, metal (repeatable)")
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


def run(args) -> int:
    graph, _ = resolve_model(args.model, args.layer, args.seed, params=False)
    manifests = []
    for target in args.target:
        name = args.backend or DEFAULT_BACKEND.get(target.split(":")[0])
        if name is None:
            raise BackendError(f"no default backend for target '{target}'; pass --backend "
                               f"(known: {', '.join(registry.backend_names())})")
        backend = registry.load(name)
        backend.check_target(target)        # before a folder is named after it
        out_dir = Path(args.out) / target.replace(":", "_")
        t0 = time.perf_counter()
        manifest = backend.lower(graph, target, out_dir, options_for(backend, parse_options(args.option)))
        manifests.append(manifest)
        if not args.json:
            files = sum(len(k.get("artifacts", {})) for k in manifest["kernels"])
            print(f"{name:8} {target:14} {len(manifest['kernels']):3} kernels, {files:3} artifacts "
                  f"in {time.perf_counter() - t0:5.1f}s -> {out_dir}/manifest.json")
    if args.json:
        print(json.dumps(manifests, indent=1))
    return 0
