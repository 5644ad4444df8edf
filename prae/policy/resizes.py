"""Counting resizes per workload-hour, and keeping them few.

A resize is a change of the amount reserved for a workload. Growing is never held back
(under-prediction costs waiting; it is met at once); shrinking is, twice: by hysteresis
(:func:`prae.policy.requests.apply_hysteresis`) and by a rate limit here, so that a
workload whose forecast wobbles is not resized every tick.

Pure: the clock comes in as an argument, nothing is read from the outside.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Change = Literal["new", "grow", "shrink", "hold", "release"]
HOUR_S = 3600.0


@dataclass(frozen=True)
class ResizeLimits:
    """``max_shrinks_per_hour``: shrinks allowed per workload in any sliding hour.

    ``min_hold_s``: a reservation is not shrunk within this many seconds of its last
    change. Worked number: with 4 shrinks/hour and min_hold_s = 300, a workload whose
    forecast drops every tick for an hour is shrunk at most 4 times, at least 5 min apart.

    ``peak_hold_s``: a reservation never shrinks below the highest amount planned for the
    workload (forecast or usage) in this many seconds. Bursty workloads burst again soon:
    on the Bitbrains trace a 3-hour peak hold is what halves the pending demand left after
    a forecast (see ``bench/cluster_sim.py``). 0 = off.
    """

    max_shrinks_per_hour: float = 4.0
    min_hold_s: float = 0.0
    peak_hold_s: float = 0.0


def classify(before: tuple[float, float], after: tuple[float, float]) -> Change:
    """How a reservation changes from ``before`` to ``after`` (cpu, mem)."""
    had = before[0] > 0 or before[1] > 0
    has = after[0] > 0 or after[1] > 0
    if not had:
        return "new" if has else "hold"
    if not has:
        return "release"
    if after == before:
        return "hold"
    if after[0] >= before[0] and after[1] >= before[1]:
        return "grow"
    return "shrink"


@dataclass
class _History:
    first_at: float
    last_change_at: float
    shrinks: deque[float] = field(default_factory=deque)
    resizes: int = 0  # grows + shrinks (not the first reservation, not the release)
    grows: int = 0
    last_seen_at: float = 0.0


class ResizeLedger:
    """Per-workload resize history: the rate limit on shrinks and the per-hour counts."""

    def __init__(self, limits: ResizeLimits | None = None) -> None:
        self.limits = limits or ResizeLimits()
        self._h: dict[str, _History] = {}

    def shrink_allowed(self, workload: str, now: float) -> bool:
        h = self._h.get(workload)
        if h is None:
            return True
        while h.shrinks and h.shrinks[0] <= now - HOUR_S:
            h.shrinks.popleft()
        if now - h.last_change_at < self.limits.min_hold_s:
            return False
        return len(h.shrinks) < self.limits.max_shrinks_per_hour

    def record(self, workload: str, change: Change, now: float) -> None:
        h = self._h.get(workload)
        if h is None:
            h = self._h[workload] = _History(first_at=now, last_change_at=now)
        h.last_seen_at = now
        if change in ("grow", "shrink"):
            h.resizes += 1
            h.last_change_at = now
            if change == "grow":
                h.grows += 1
            else:
                h.shrinks.append(now)
        elif change in ("new", "release"):
            h.last_change_at = now

    def record_all(self, changes: Iterable[tuple[str, Change]], now: float) -> None:
        for workload, change in changes:
            self.record(workload, change, now)

    def resizes(self, workload: str) -> int:
        h = self._h.get(workload)
        return h.resizes if h else 0

    def per_workload_hour(self) -> dict[str, float]:
        """workload -> resizes per hour of the time it has been planned for (at least one
        minute counted, so a workload seen once does not divide by zero)."""
        return {w: h.resizes / max(h.last_seen_at - h.first_at, 60.0) * HOUR_S for w, h in self._h.items()}

    def summary(self) -> dict[str, float]:
        """Totals over all workloads: resizes, workload-hours, resizes per workload-hour."""
        resizes = sum(h.resizes for h in self._h.values())
        hours = sum(max(h.last_seen_at - h.first_at, 60.0) for h in self._h.values()) / HOUR_S
        return {
            "resizes": float(resizes),
            "workload_hours": hours,
            "resizes_per_workload_hour": resizes / hours if hours > 0 else 0.0,
        }
