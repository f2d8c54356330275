"""`portable-moe import-hf PATH -o DIR [--block-only] [--layer N]`: a local transformers model directory ->
DIR/graph.json (IR JSON), DIR/params.safetensors, DIR/config.json (our MoEConfig, loadable as a model
config) and DIR/source.json (family, layer, ir name -> transformers name)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..ir import PortableMoeError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("import-hf", help="import a local Hugging Face MoE model directory into the IR")
    p.add_argument("path", help="local directory with config.json and *.safetensors (never downloads)")
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.add_argument("--block-only", action="store_true", help="import one MoE block (x[tokens, H] -> y) only")
    p.add_argument("--layer", type=int, default=None, help="decoder layer of the block (default: the first MoE one)")
    p.set_defaults(func=run)


def check_out(out: Path, source: Path):
    """Before any work: the output is a directory (or can be made one) and is not the model being read."""
    if out.exists() and not out.is_dir():
        raise PortableMoeError(f"-o {out}: exists and is not a directory")
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise PortableMoeError(f"-o {out} is the input directory; its config.json would be overwritten")


def replace_into(out: Path, name: str, write: Callable[[Path], None]):
    """Writes a temporary file, then renames it over out/name: a link there is replaced, never followed,
    and a reader never sees half a file."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o644)
        write(Path(tmp))
        os.replace(tmp, out / name)
    except OSError as e:
        raise PortableMoeError(f"cannot write {out / name}: {e.strerror or e}") from None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def run(args) -> int:
    from portable_moe import ir
    from portable_moe.hf import from_hf
    from portable_moe.models.params import save_params

    out = Path(args.out)
    check_out(out, Path(args.path))
    imp = from_hf(args.path, block_only=args.block_only, layer=args.layer)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PortableMoeError(f"-o {out}: cannot create it ({e.strerror})") from None
    source = {"path": str(args.path), "family": imp.family, "layer": imp.layer, "names": imp.names}
    replace_into(out, "graph.json", lambda p: p.write_text(ir.to_json(imp.graph)))
    replace_into(out, "params.safetensors", lambda p: save_params(imp.params, p))
    replace_into(out, "config.json", lambda p: p.write_text(json.dumps(imp.config.to_dict(), indent=1)))
    replace_into(out, "source.json", lambda p: p.write_text(json.dumps(source, indent=1)))
    what = f"MoE block of layer {imp.layer}" if imp.layer is not None else "whole causal LM"
    print(f"imported {imp.family} {what}: {len(imp.graph.nodes)} nodes, {len(imp.params)} params -> {out}")
    return 0
