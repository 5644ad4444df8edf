"""How long the loop's ticks and their phases took: did the engine keep its interval?

A tick that overruns its interval issues its forecasts late and the next tick's fewer: on a
loaded machine the workloads' telemetry keeps its 1 Hz (the supervisors sample on their own)
while the loop falls behind. The run summary reports it so that a user sees whether PRAE
kept up, and which phase did not (a slow Serve call, a hot swap, the allocator).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class TickTiming:
    interval_s: float
    clock: Callable[[], float] = time.perf_counter
    durations: list[float] = field(default_factory=list)
    phase_max: dict[str, float] = field(default_factory=dict)
    phase_total: dict[str, float] = field(default_factory=dict)
    late: int = 0  # ticks longer than the interval

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
            self.durations.append(dt)
            self.late += int(dt > self.interval_s)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: tick count, median / p95 / max seconds, ticks longer than the interval,
        and each phase's longest and total seconds."""
        d = np.asarray(self.durations, dtype=float)
        if d.size == 0:
            return {"ticks": 0, "late": 0}
        return {
            "ticks": int(d.size),
            "p50_s": round(float(np.median(d)), 3),
            "p95_s": round(float(np.quantile(d, 0.95)), 3),
            "max_s": round(float(d.max()), 3),
            "late": int((d > self.interval_s).sum()),
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
