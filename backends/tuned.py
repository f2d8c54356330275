"""Tuning any backend can use (backend-agnostic): a race that times candidate configurations in
interleaved rounds under a time budget, and a tuned-config table kept as JSON in a cache folder.

A table file is {"format": ..., "version": ..., "entries": {key: entry}}, each entry JSON-able data the
backend chose (its winner and rate, say); a missing, foreign or damaged file reads as no entries, with
a warning when it exists, and is rewritten whole by the next put."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .cache import read_json, warn, write_json


class TunedTable:
    """One table file; entries holds its {key: entry}, read once (path None: kept in this process only)."""

    def __init__(self, path: Path | None, format: str, version: int, what: str = "tuned table"):
        self.path, self.format, self.version, self.what = path, format, version, what
        self.entries = self.read()

    def read(self) -> dict:
        entries = read_json(self.path, self.what).get("entries") if self.path else None
        return entries if isinstance(entries, dict) else {}

    def put(self, key: str, entry):
        """Adds or replaces one entry, keeping those saved meanwhile; if the file cannot be written, it serves
        this process."""
        self.entries = {**self.read(), **self.entries, key: entry}
        try:
            if self.path:
                write_json(self.path, {"format": self.format, "version": self.version, "entries": self.entries})
        except OSError as e:
            warn(f"{self.what} {self.path} not saved ({e.strerror or e})")


def race(label: str, candidates: Sequence, build: Callable[[object], Callable[[], object]], budget: float,
         rate: Callable[[float], float], unit: str = "GFLOP/s", rounds: int = 3) -> tuple[object, float]:
    """build(candidate) compiles one and returns a function that runs it once; candidates are built while
    half the budget lasts, then every built one is timed in `rounds` interleaved rounds (best of them), so
    load from other processes falls on all alike. Returns the winner and rate(its best seconds); progress
    and the result (every candidate's rate) go to stderr."""
    start, built = time.perf_counter(), []
    for i, candidate in enumerate(candidates):
        built.append((candidate, build(candidate)))
        spent = time.perf_counter() - start
        print(f"{label}: compiled {i + 1}/{len(candidates)} candidates, {spent:.0f} s", file=sys.stderr, flush=True)
        if spent > budget / 2:
            break
    best = dict.fromkeys((c for c, _ in built), float("inf"))
    for _ in range(rounds):
        for candidate, run in built:
            t0 = time.perf_counter()
            run()
            best[candidate] = min(best[candidate], time.perf_counter() - t0)
    rates = {c: rate(s) for c, s in best.items()}
    winner = max(rates, key=rates.get)
    others = ", ".join(f"{c} {r:.1f}" for c, r in rates.items() if c != winner)
    print(f"{label}: {winner} wins, {rates[winner]:.1f} {unit}{f' ({others})' if others else ''}, "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return winner, rates[winner]
