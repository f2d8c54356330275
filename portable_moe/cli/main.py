"""`portable-moe`: one subcommand per module in this folder. Errors of the library (PortableMoeError)
print as one line and exit 2; nothing else is caught, so real bugs still show their traceback.

Only the module of the command being run is imported (torch, TVM and Triton take seconds to import),
so `portable-moe --help` and `--version` start in a fraction of a second."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..ir import PortableMoeError
from ..knobs import help_text

# command -> (module, one line for `portable-moe --help`)
COMMANDS = {
    "devices": ("devices", "devices found; each backend: usable here or why not"),
    "demo": ("demo", "the main job on an embedded default model"),
    "ir": ("ir", "print or verify the IR of a model"),
    "compile": ("compile", "lower a model ahead of time for named targets (no hardware needed)"),
    "conformance": ("conformance", "check backends against the float64 reference (every op, models, forward and "
                                   "backward)"),
    "plan": ("plan", "place MoE experts on a heterogeneous cluster (EPLB replacement)"),
    "export": ("export", "export a model to ONNX (standard operators, checked)"),
    "train": ("train", "expert-parallel training across heterogeneous devices"),
    "import-hf": ("import_hf", "import a local Hugging Face MoE model directory into the IR"),
    "bench": ("bench", "time one MoE layer on every backend beside torch eager baselines"),
}


def version() -> str:
    from .. import __version__

    return __version__


def chosen(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is one), if any."""
    return next((a for a in argv if a in COMMANDS), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Every command's full parser when argv is None; else the full parser of the command argv names
    only (the others are listed by name and help line)."""
    parser = argparse.ArgumentParser(
        prog="portable-moe", description="Run and train Mixture-of-Experts models on any accelerator vendor.",
        epilog=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"portable-moe {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None if argv is None else chosen(argv)
    for name, (module, line) in COMMANDS.items():
        if argv is None or name == wanted:
            importlib.import_module(f"{__package__}.{module}").add_parser(sub)
        else:
            sub.add_parser(name, help=line)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
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
