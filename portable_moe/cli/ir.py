"""`portable-moe ir print MODEL [--json]` and `portable-moe ir verify FILE`."""

from __future__ import annotations

import sys

from ..ir import load, to_json, to_text
from .models import add_model_args, resolve_model


def add_parser(subparsers):
    p = subparsers.add_parser("ir", help="print or verify the IR of a model")
    sub = p.add_subparsers(dest="ir_command", metavar="ACTION", required=True)
    show = sub.add_parser("print", help="print a model's IR as text, or as the IR JSON with --json")
    add_model_args(show)
    show.add_argument("--json", action="store_true", help="write the IR JSON that every command accepts")
    show.set_defaults(func=run_print)
    check = sub.add_parser("verify", help="check an IR JSON file; exit 0 when it is well formed")
    check.add_argument("file")
    check.set_defaults(func=run_verify)


def run_print(args) -> int:
    graph, _ = resolve_model(args.model, args.layer, args.seed, params=False)
    sys.stdout.write(to_json(graph) if args.json else to_text(graph) + "\n")
    return 0


def run_verify(args) -> int:
    graph = load(args.file)
    print(f"{args.file}: ok — graph '{graph.name}', {len(graph.nodes)} nodes, {len(graph.params)} params, "
          f"ops: {', '.join(sorted(graph.ops()))}")
    return 0
