"""`portable-moe conformance [--backend B|all] [--device D] [--dtype ...] [--quick|--full] [--json F]
[--junit F] [--html F]`: every op and the small models, forward and backward, against the float64
reference. Exit status 0 only if every executed case passed (known failures are listed, not counted);
backends that cannot load or run here are shown as unavailable and do not count."""

from __future__ import annotations

from ..conformance.report import write_html, write_json, write_junit
from ..conformance.runner import DEFAULT_DTYPES, run_suite
from .models import DTYPES


def add_parser(subparsers):
    p = subparsers.add_parser("conformance", help="check backends against the float64 reference (every op, "
                                                  "models, forward and backward)")
    p.add_argument("--backend", action="append", default=None, metavar="B",
                   help="backend name, or 'all' (default; repeatable)")
    p.add_argument("--device", default=None, help="device id (cpu, cuda:0, opencl:0, ...); default: every device "
                                                  "each backend can use")
    p.add_argument("--dtype", nargs="+", default=list(DEFAULT_DTYPES), choices=DTYPES, metavar="D",
                   help=f"dtypes, from {', '.join(DTYPES)} (default: %(default)s)")
    tier = p.add_mutually_exclusive_group()
    tier.add_argument("--quick", dest="tier", action="store_const", const="quick", help="the CI tier (default)")
    tier.add_argument("--full", dest="tier", action="store_const", const="full", help="more shapes and seeds")
    p.add_argument("--op", action="append", default=None, help="only these cases (glob, e.g. 'router', 'model:*')")
    p.add_argument("--case", default=None, help="only samples whose name matches this glob (e.g. 'edge:*')")
    p.add_argument("--seed", type=int, default=0, help="base seed of the random samples (default 0)")
    p.add_argument("--json", default=None, metavar="F", help="write the full report as JSON")
    p.add_argument("--junit", default=None, metavar="F", help="write JUnit XML")
    p.add_argument("--html", default=None, metavar="F", help="write the HTML matrix")
    p.add_argument("--no-record", action="store_true", help="do not write verdicts into the results cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, tier="quick")


def run(args) -> int:
    backends = args.backend or "all"
    report = run_suite(backends, args.device, args.dtype, args.tier, ops=args.op, case=args.case, seed=args.seed,
                       progress=not args.no_progress, record=not args.no_record)
    for path, write in ((args.json, write_json), (args.junit, write_junit), (args.html, write_html)):
        if path:
            write(report, path)
    print("\n".join(report.failure_lines()))
    print("\n".join(report.summary_lines()))
    return 0 if report.passed else 1
