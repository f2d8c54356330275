"""The conformance suite: every op and the small model presets, forward and backward, on seeded random
inputs and the MoE edge cases, checked against the float64 reference backend.

    from portable_moe.conformance import run_suite, run_quick
    report = run_suite("all" | name | Backend instance | [...], device="cpu", dtypes=["float32"], tier="quick")
    print("\\n".join(report.summary_lines())); report.passed

CLI: `portable-moe conformance`; pytest: `pytest --conformance=B`. Known failures live in
known_failures/<backend>.json; verdicts go to the results cache that run-time selection reads."""

from importlib import import_module

# Lazy: the pytest plug-in imports this package in every pytest run, so nothing heavy loads until used.
_WHERE = {"ConformanceError": "known", "KnownFailure": "known", "load_known": "known", "CaseResult": "result",
          "Report": "result", "Target": "result", "DEFAULT_DTYPES": "runner", "Runner": "runner",
          "run_quick": "runner", "run_suite": "runner"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
