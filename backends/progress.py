"""Console helpers for any backend that compiles many kernels through native code (backend-agnostic):
a compile-progress line, and a filter for known noise that a native library writes to stderr."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


class Progress:
    """While compiling (a context): a line that counts up on a terminal, elsewhere one line when compiling
    starts. It writes to stderr as it was when created (native_stderr_filtered holds back later writes)."""

    def __init__(self, label: str, total: int):
        sys.stderr.flush()
        self.label, self.total, self.done = label, total, 0
        self.stream = os.fdopen(os.dup(2), "w")
        self.tty = self.stream.isatty()

    def __call__(self):
        self.done += 1
        if self.tty:
            print(f"\r{self.label}: compiling {self.done}/{self.total} kernels not in the cache", end="",
                  file=self.stream, flush=True)
        elif self.done == 1:
            print(f"{self.label}: compiling the kernels not in the cache ({self.total} steps)", file=self.stream,
                  flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc):
        if self.tty and self.done:
            print("\r\033[K", end="", file=self.stream, flush=True)
        self.stream.close()


@contextlib.contextmanager
def native_stderr_filtered(noise: tuple[str, ...]):
    """Routes the C++ side's stderr through a file, then passes on every line that is not known noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if not any(n in line for n in noise):
                    print(line, file=sys.stderr)
