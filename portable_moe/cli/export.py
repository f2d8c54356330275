"""`portable-moe export MODEL -o F.onnx [--dtype D] [--external-data] [--json]`: the model as a
standard ONNX file (opset 21, weights as initializers), checked by onnx.checker (full check)."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

from ..ir import IRError, parse_json, read_bounded
from ..ir.arrays import to_numpy
from ..ir.onnx import OPSET, check, export, save
from ..models import PRESETS, build_model, build_moe_layer, init_params, load_config, preset
from .models import DTYPES, add_model_args, resolve_model

EXTERNAL_ABOVE_BYTES = 1 << 30     # protobuf cannot hold a model over 2 GiB; leave headroom


def add_parser(subparsers):
    p = subparsers.add_parser("export", help="export a model to ONNX (standard operators, checked)")
    add_model_args(p)
    p.add_argument("-o", "--out", required=True, help="the .onnx file to write")
    p.add_argument("--dtype", default=None, choices=DTYPES, help="rebuild a preset or config model in this dtype")
    p.add_argument("--external-data", action="store_true",
                   help="weights in <file>.data beside the model (automatic above 1 GiB of weights)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def is_ir_file(obj) -> bool:
    return isinstance(obj, dict) and "format" in obj


def model_in_dtype(spec: str, dtype: str, layer: bool, seed: int):
    if spec in PRESETS:
        cfg = preset(spec)
    elif spec.endswith(".json") and not is_ir_file(parse_json(read_bounded(spec, "MODEL file"))):
        cfg = load_config(spec)
    else:
        raise IRError(f"--dtype needs a preset or a model config JSON, not '{spec}' (an IR file has fixed dtypes)")
    cfg = cfg.with_(dtype=dtype)
    graph = build_moe_layer(cfg) if layer else build_model(cfg)
    return graph, init_params(graph, seed)


def export_file(graph, params, out: Path, external: bool | None = None) -> dict:
    """Writes and checks the ONNX file; returns a summary."""
    arrays = {name: to_numpy(t) for name, t in params.items()}
    weight_bytes = sum(a.nbytes for a in arrays.values())
    external = weight_bytes > EXTERNAL_ABOVE_BYTES if external is None else external
    model = export(graph, arrays)
    save(model, out, external_data=external)
    files = [out] + ([out.with_name(out.name + ".data")] if external else [])
    try:
        check(out)
    except IRError:
        for f in files:                     # no invalid file left behind
            f.unlink(missing_ok=True)
        raise
    ops = Counter(n.op_type for n in model.graph.node)
    return {"file": str(out), "graph": graph.name, "opset": OPSET, "nodes": len(model.graph.node),
            "op_types": dict(sorted(ops.items())), "bytes": sum(f.stat().st_size for f in files),
            "external_data": external, "checker": "ok"}


def run(args) -> int:
    if args.dtype:
        graph, params = model_in_dtype(args.model, args.dtype, args.layer, args.seed)
    else:
        graph, params = resolve_model(args.model, args.layer, args.seed)
    summary = export_file(graph, params, Path(args.out), True if args.external_data else None)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(one_line(summary))
    return 0


def one_line(s: dict) -> str:
    where = " (+ external data)" if s["external_data"] else ""
    return (f"exported '{s['graph']}' to {s['file']}{where}: {s['nodes']} ONNX nodes of {len(s['op_types'])} "
            f"op types, opset {s['opset']}, {s['bytes']:,} bytes; onnx.checker (full check) {s['checker']}")


def demo_summary(model: str = "debug") -> str:
    """For the demo: export a preset to a temporary file, run the checker, one line back."""
    graph, params = resolve_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        summary = export_file(graph, params, Path(tmp) / f"{model}.onnx")
    return one_line(summary).replace(f" to {summary['file']}", "")
