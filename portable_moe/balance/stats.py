"""Runtime statistics: per-layer expert token counts as a moving window or exponential average.

Shapes: L layers, E experts, W window length. No Python loops over experts.
"""

from __future__ import annotations

import numpy as np

from .cluster import BalanceError


def _as_numpy(counts) -> np.ndarray:
    if hasattr(counts, "detach"):  # torch tensor, any device
        counts = counts.detach().float().cpu().numpy()
    return np.asarray(counts, dtype=np.float64)


class LoadStats:
    """Collect tokens per expert. window=W keeps the last W updates of each layer (loads() is their mean);
    otherwise loads() is an exponential moving average with weight `decay` on the past."""

    def __init__(self, num_layers: int, num_experts: int, window: int | None = None, decay: float = 0.9):
        if num_layers <= 0 or num_experts <= 0:
            raise BalanceError(
                f"LoadStats needs positive sizes, got {num_layers} layers x {num_experts} experts"
            )
        if window is not None and window <= 0:
            raise BalanceError(f"window must be a positive integer, got {window}")
        if not 0.0 <= decay < 1.0:
            raise BalanceError(f"decay must be in [0, 1), got {decay}")
        self.num_layers, self.num_experts, self.window, self.decay = num_layers, num_experts, window, decay
        self._buf = np.zeros((window or 1, num_layers, num_experts))  # [W, L, E] ring (window mode)
        self._pos = np.zeros(num_layers, np.int64)  # [L] next ring slot per layer
        self._seen = np.zeros(num_layers, np.int64)  # [L] updates so far
        self._ema = np.zeros((num_layers, num_experts))  # [L, E]

    def update(self, layer: int, counts) -> None:
        """counts [E] tokens per expert of one layer (torch tensor or array)."""
        if not 0 <= layer < self.num_layers:
            raise BalanceError(f"layer {layer} out of range (LoadStats has {self.num_layers} layers)")
        c = _as_numpy(counts)
        if c.shape != (self.num_experts,):
            raise BalanceError(
                f"counts for layer {layer} have shape {c.shape}, expected ({self.num_experts},)"
            )
        self._add(np.array([layer]), c[None, :])

    def update_all(self, counts) -> None:
        """counts [L, E] tokens per expert of every layer."""
        c = _as_numpy(counts)
        if c.shape != (self.num_layers, self.num_experts):
            raise BalanceError(
                f"counts have shape {c.shape}, expected ({self.num_layers}, {self.num_experts})"
            )
        self._add(np.arange(self.num_layers), c)

    def _add(self, layers: np.ndarray, c: np.ndarray) -> None:
        if self.window is not None:
            self._buf[self._pos[layers], layers] = c
            self._pos[layers] = (self._pos[layers] + 1) % self.window
        else:
            first = (self._seen[layers] == 0)[:, None]
            self._ema[layers] = np.where(first, c, self.decay * self._ema[layers] + (1 - self.decay) * c)
        self._seen[layers] += 1

    def loads(self) -> np.ndarray:
        """-> [L, E] float64: window mean (over the updates seen, up to W) or exponential average."""
        if self.window is None:
            return self._ema.copy()
        n = np.clip(self._seen, 1, self.window)[:, None]
        return self._buf.sum(0) / n
