"""When samples are taken and ticks run: on one wall-clock grid.

Every sampler takes its samples at whole multiples of its interval (unix time), and the
engine ticks ``tick_lag`` after each grid point. So each tick finds exactly one new sample
of every workload, whatever the phase its sampler started in, and neither side drifts:
a loop that sleeps "the interval minus the tick" runs a little slower than the samplers
(each sleep overshoots), and every time the two slip past each other a tick finds no new
sample and a forecast is lost. One clock on one node; across nodes NTP keeps them within
milliseconds of each other, far inside the lag.
"""

from __future__ import annotations

import math


def grid_after(t: float, interval: float, offset: float = 0.0) -> float:
    """The first time ``k * interval + offset`` strictly after ``t``."""
    return (math.floor((t - offset) / interval) + 1) * interval + offset


def tick_lag(interval: float) -> float:
    """How long after a grid point the engine ticks: a sample taken a little late on a busy
    machine is still that tick's. Half an interval, at most a second (a 60-s production tick
    should not plan on data 30 s old)."""
    return min(interval / 2, 1.0)


def next_tick(slot: float, now: float, interval: float) -> tuple[float, float]:
    """(when, slot) of the tick after the one scheduled for ``slot``, at ``now``.

    On time: the next slot. A tick that overran the next slot runs at once, as the latest slot
    it passed (its newest samples are waiting), and the slots in between are skipped rather
    than run back to back on the same samples."""
    nxt = slot + interval
    if now < nxt:
        return nxt, nxt
    latest = nxt + math.floor((now - nxt) / interval) * interval
    return now, latest
