"""`portable-moe`: one subcommand per module in this folder. Errors of the library (PortableMoeError)
print as one line and exit 2; nothing else is caught, so real bugs still show their traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..ir import PortableMoeError
from ..knobs import help_text

COMMANDS = ("devices", "demo", "ir", "compile", "conformance", "plan", "export", "train", "import_hf", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portable-moe", description="Run and train Mixture-of-Experts models on any accelerator vendor.",
        epilog=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except PortableMoeError as e:
        print(f"portable-moe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("portable-moe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
