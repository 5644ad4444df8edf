"""How long the loop's ticks and their phases took: did the engine keep its interval?

A tick that overruns its interval issues its forecasts late and the next tick's fewer: on a
loaded machine the workloads' telemetry keeps its 1 Hz (the supervisors sample on their own)
while the loop falls behind. The run summary reports it so that a user sees whether PRAE
kept up, and which phase did not (a slow Serve call, a hot swap, the allocator).

Memory does not grow with the run: the median and p95 come from a histogram of log-spaced
bins (each 1 % wide, 0.1 ms to 10^4 s), not from every tick's duration kept (a long-lived
engine ticks 86 400 times a day). A quantile is its bin's geometric middle, within 0.5 % of
the exact one, clamped to the fastest and slowest tick seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BIN_RATIO = 1.01
LOWEST_S = 1e-4
N_BINS = int(math.ceil(math.log(1e4 / LOWEST_S) / math.log(BIN_RATIO))) + 1  # 1853


def _bin(seconds: float) -> int:
    if seconds <= LOWEST_S:
        return 0
    return min(N_BINS - 1, 1 + int(math.log(seconds / LOWEST_S) / math.log(BIN_RATIO)))


@dataclass
class TickTiming:
    interval_s: float
    clock: Callable[[], float] = time.perf_counter
    phase_max: dict[str, float] = field(default_factory=dict)
    phase_total: dict[str, float] = field(default_factory=dict)
    ticks: int = 0
    late: int = 0  # ticks longer than the interval
    last: float | None = None  # the latest tick's seconds
    fastest: float = math.inf
    slowest: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(N_BINS, dtype=np.int64))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = self.clock()
        try:
            yield
        finally:
            dt = self.clock() - t0
            self.phase_max[name] = max(self.phase_max.get(name, 0.0), dt)
            self.phase_total[name] = self.phase_total.get(name, 0.0) + dt

    @contextmanager
    def tick(self) -> Iterator[None]:
        t0 = self.clock()
        try:
            yield
        finally:
            dt = self.clock() - t0
            self.ticks += 1
            self.late += int(dt > self.interval_s)
            self.last = dt
            self.fastest, self.slowest = min(self.fastest, dt), max(self.slowest, dt)
            self.counts[_bin(dt)] += 1

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the ticks' seconds (module docstring); NaN before a tick."""
        if not self.ticks:
            return math.nan
        k = int(np.searchsorted(np.cumsum(self.counts), q * self.ticks, side="left"))
        mid = 0.0 if k == 0 else LOWEST_S * BIN_RATIO ** (k - 0.5)
        return min(max(mid, self.fastest), self.slowest)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: tick count, median / p95 / max seconds, ticks longer than the interval,
        and each phase's longest and total seconds."""
        if not self.ticks:
            return {"ticks": 0, "late": 0}
        return {
            "ticks": self.ticks,
            "p50_s": round(self.quantile(0.5), 3),
            "p95_s": round(self.quantile(0.95), 3),
            "max_s": round(self.slowest, 3),
            "late": self.late,
            "phase_max_s": {k: round(v, 3) for k, v in self.phase_max.items()},
            "phase_total_s": {k: round(v, 3) for k, v in self.phase_total.items()},
        }


def timing_text(t: dict[str, Any]) -> str:
    """One line for the run summary."""
    if not t.get("ticks"):
        return "ticks: none"
    slowest = max(t["phase_max_s"].items(), key=lambda kv: kv[1], default=("n/a", 0.0))
    return (
        f"ticks: {t['ticks']}, {t['late']} longer than the interval; seconds p50 {t['p50_s']:.3f}, "
        f"p95 {t['p95_s']:.3f}, max {t['max_s']:.3f} (slowest phase: {slowest[0]}, {slowest[1]:.3f} s)"
    )
