"""`portable-moe import-hf PATH -o DIR [--block-only] [--layer N]`: a local transformers model directory ->
DIR/graph.json (IR JSON), DIR/params.safetensors, DIR/config.json (our MoEConfig, loadable as a model
config) and DIR/source.json (family, layer, ir name -> transformers name)."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("import-hf", help="import a local Hugging Face MoE model directory into the IR")
    p.add_argument("path", help="local directory with config.json and *.safetensors (never downloads)")
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.add_argument("--block-only", action="store_true", help="import one MoE block (x[tokens, H] -> y) only")
    p.add_argument("--layer", type=int, default=None, help="decoder layer of the block (default: the first MoE one)")
    p.set_defaults(func=run)


def run(args) -> int:
    from portable_moe import ir
    from portable_moe.hf import from_hf
    from portable_moe.models.params import save_params

    imp = from_hf(args.path, block_only=args.block_only, layer=args.layer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ir.save(imp.graph, out / "graph.json")
    save_params(imp.params, out / "params.safetensors")
    (out / "config.json").write_text(json.dumps(imp.config.to_dict(), indent=1))
    source = {"path": str(args.path), "family": imp.family, "layer": imp.layer, "names": imp.names}
    (out / "source.json").write_text(json.dumps(source, indent=1))
    what = f"MoE block of layer {imp.layer}" if imp.layer is not None else "whole causal LM"
    print(f"imported {imp.family} {what}: {len(imp.graph.nodes)} nodes, {len(imp.params)} params -> {out}")
    return 0
