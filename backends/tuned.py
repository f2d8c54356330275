"""Tuning any backend can use (backend-agnostic): a race that times candidate configurations in
interleaved rounds under a time budget, and a tuned-config table kept as JSON in a cache folder.

A table file is {"format": ..., "version": ..., "entries": {key: entry}}, each entry JSON-able data the
backend chose (its winner and rate, say); a missing, foreign or damaged file reads as no entries, with
a warning when it exists, and is rewritten by the next save."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .cache import read_json, warn, write_json


def table_entries(path: Path, what: str = "tuned table") -> dict:
    entries = read_json(path, what).get("entries")
    return entries if isinstance(entries, dict) else {}


def save_entry(path: Path, fmt: str, version: int, key: str, entry: dict):
    """Adds or replaces one entry; a table that cannot be written leaves the result to this process."""
    entries = table_entries(path)
    entries[key] = entry
    try:
        write_json(path, {"format": fmt, "version": version, "entries": entries})
    except OSError as e:
        warn(f"tuned table {path} not saved ({e.strerror or e})")


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
