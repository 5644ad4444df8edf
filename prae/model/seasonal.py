"""Seasonal point-forecast candidates: what the series did one period before the target.

Plain numpy. Three candidates for ``prae.model.combination``'s per-workload choice:

- ``periodic``: the median of the values 1, 2 and 3 periods before the target, the period
  being the lag (longer than the lead, at most ``PERIODIC_MAX_LAG`` steps) with the highest
  autocorrelation over the series' last ``PERIODIC_HISTORY`` steps, estimated again every
  ``PERIODIC_REFRESH`` steps. A VM whose CPU bursts for 8 steps every ~17.5 steps (held-out
  Bitbrains VM 235) has such a lag; the model's 48-step window sees under three cycles,
  and the last value is wrong at every edge of a burst.
- ``daily``: the median of the values 1, 2 and 3 days before the target;
- ``weekly``: the median of the values 1 and 2 weeks before it (backups, batch jobs, office
  hours: Bitbrains disk and network).

A candidate is NaN where the history does not reach (a young series, the live engine's 1-s
steps for ``daily``), and the choice then never takes it.

Measured with ``prae.backtest`` (lead 900 s, 30 days), the median WAPE ratio to the last
value (cpu / mem / disk / net), adding these three candidates and weighing all five by a
soft minimum of their recent errors (``combination.SHARPNESS``), the median then still
clipped into the model's calibrated [q0.1, q0.9]:
- 40 validation VMs (251-300, not multiples of 5; the median head never trained on them),
  where they were chosen: 0.838 / 0.712 / 0.836 / 0.839 -> 0.802 / 0.697 / 0.815 / 0.779;
- the 100 held-out VMs: 0.929 / 0.800 / 0.874 / 0.800 -> 0.920 / 0.785 / 0.763 / 0.738.
(``combination.centre_on`` since: MODEL_CARD.md.) Tried on the held-out VMs with the
periodic candidate only and the best candidate alone (this one: 0.920 / 0.794 / 0.809 /
0.756): a 576-step history (2 days) with one repeat, 0.916 / 0.795 / 0.818 / 0.768; with
five, 0.917 / 0.793 / 0.818 / 0.762; a 288-step history, 0.925 / 0.798 / 0.849 / 0.767.

The backtest computes all steps at once (``seasonal_track``); the live engine one step at a
time (``SeasonalNow``). Both estimate the period of row t from the window ending at row
``t - t % PERIODIC_REFRESH``, counted from the series' first row, so they agree row for row.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SEASONAL: tuple[str, ...] = ("periodic", "daily", "weekly")
PERIODIC_HISTORY = 1152  # steps of autocorrelation (4 days of 5-min steps)
PERIODIC_MAX_LAG = 288  # the longest period looked for (a day of 5-min steps)
PERIODIC_REFRESH = 12  # steps between estimates (an hour of 5-min steps)
MAX_MISSING = 0.2  # a window missing more than this share of its steps gives no period
REPEATS = np.array([3, 3, 2])  # values looked back at, per candidate of SEASONAL
CALENDAR_S: dict[str, float] = {"daily": 86400.0, "weekly": 7 * 86400.0}


def dominant_periods(windows: np.ndarray, min_lag: int, max_lag: int = PERIODIC_MAX_LAG) -> np.ndarray:
    """The lag in [min_lag, max_lag] with the highest autocorrelation of each window.

    windows: shape (..., W), oldest first, NaN = missing. The lags stop at W // 2. Returns
    ints of shape (...): 0 where the window misses more than ``MAX_MISSING`` of its steps,
    is constant, or is too short for a lag of ``min_lag``. The autocorrelation at lag k is
    normalised by the W - k pairs it sums over, so long lags are not penalised for having
    fewer.
    """
    w = np.asarray(windows, dtype=np.float64)
    n = w.shape[-1]
    max_lag = min(int(max_lag), n // 2)
    out = np.zeros(w.shape[:-1], dtype=np.int64)
    if max_lag < min_lag or n == 0:
        return out
    known = ~np.isnan(w)
    missing = 1.0 - known.mean(axis=-1)
    mean = np.where(known, w, 0.0).sum(axis=-1, keepdims=True) / np.maximum(known.sum(axis=-1, keepdims=True), 1)
    centred = np.where(known, w - mean, 0.0)
    spec = np.fft.rfft(centred, 2 * n, axis=-1)
    ac = np.fft.irfft(spec * np.conj(spec), axis=-1)[..., : max_lag + 1]
    ac = ac / (n - np.arange(max_lag + 1))
    best = min_lag + np.argmax(ac[..., min_lag:], axis=-1)
    ok = (missing <= MAX_MISSING) & (ac[..., 0] > 0)
    out[ok] = best[ok]
    return out


def calendar_periods(step_s: float, lead: int) -> dict[str, int]:
    """``daily`` and ``weekly`` in steps of ``step_s``, where a whole number of steps longer
    than the lead makes them: 288 and 2016 at 5-min steps."""
    return dict(_calendar_items(float(step_s), int(lead)))


@functools.lru_cache(maxsize=64)
def _calendar_items(step_s: float, lead: int) -> tuple[tuple[str, int], ...]:
    # cached: the engine asks once per workload and tick, always with the same few pairs
    out = []
    for name, seconds in CALENDAR_S.items():
        steps = seconds / step_s
        if abs(steps - round(steps)) < 1e-6 and round(steps) > lead:
            out.append((name, int(round(steps))))
    return tuple(out)


def _median_known(vals: np.ndarray) -> np.ndarray:
    """The median over axis 0 of the known values, NaN where none is. np.nanmedian costs
    ~0.1 ms a call, and the engine calls this per workload and tick: sorted, NaNs last, the
    middle one or two of the known ones."""
    vals = np.sort(vals, axis=0)
    known = (~np.isnan(vals)).sum(axis=0)
    flat = vals.reshape(vals.shape[0], -1)
    cols = np.arange(flat.shape[1])
    lo = flat[np.maximum(known.ravel() - 1, 0) // 2, cols]
    hi = flat[known.ravel() // 2, cols]
    mid = np.where(known.ravel() > 1, (lo + hi) / 2, lo).reshape(known.shape)
    return np.where(known > 0, mid, np.nan)


def _repeat(x: np.ndarray, rows: np.ndarray, lead: int, period: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    """The median of x[row + lead - k * period], k = 1..repeats, for each row and period;
    x (T, R), rows (n,), period (P, n, R) or broadcasting to it, repeats (P,). Returns
    (P, n, R); NaN where none is known (a period of 0 or one not longer than the lead)."""
    repeats = np.asarray(repeats, dtype=np.int64)
    k = np.arange(1, int(repeats.max()) + 1)[:, None, None, None]  # (k, 1, 1, 1)
    period = np.asarray(period, dtype=np.int64)[None]  # (1, P, n, R)
    src = rows[None, None, :, None] + lead - k * period
    ok = (period > lead) & (src >= 0) & (k <= repeats[None, :, None, None])
    vals = np.where(ok, x[np.clip(src, 0, len(x) - 1), np.arange(x.shape[1])], np.nan)
    return _median_known(vals)


def _with_calendar(periodic: np.ndarray, step_s: float, lead: int) -> np.ndarray:
    """(3, ...) the periods of the ``SEASONAL`` candidates: ``periodic``'s, then the day's
    and the week's in steps (0 where they are not a whole number of steps)."""
    periods = np.zeros((len(SEASONAL), *np.shape(periodic)), dtype=np.int64)
    periods[0] = periodic
    for name, steps in _calendar_items(float(step_s), int(lead)):
        periods[SEASONAL.index(name)] = steps
    return periods


def period_rows(rows: np.ndarray) -> np.ndarray:
    """The row (counted from the series' first, 0-based) whose window sets the period of
    each of ``rows``: the last multiple of ``PERIODIC_REFRESH`` at or before it, if a
    whole window of ``PERIODIC_HISTORY`` ends there; -1 before that."""
    rows = np.asarray(rows, dtype=np.int64)
    end = rows - rows % PERIODIC_REFRESH
    return np.where((rows >= 0) & (end >= PERIODIC_HISTORY - 1), end, -1)


def seasonal_track(y: np.ndarray, lead: int, step_s: float) -> np.ndarray:
    """The candidates of every row of one series: y (T, R) on a regular grid of ``step_s``,
    row 0 its first. Returns (T, R, 3) in ``SEASONAL`` order: the forecasts issued at each
    row for row + lead, from rows <= t only."""
    y = np.asarray(y, dtype=np.float64)
    t_n, r_n = y.shape
    rows = np.arange(t_n)
    ends = period_rows(rows)
    period = np.zeros((t_n, r_n), dtype=np.int64)
    windows, which = np.unique(ends[ends >= 0], return_inverse=True)
    if windows.size:
        win = sliding_window_view(y, PERIODIC_HISTORY, axis=0)[windows - PERIODIC_HISTORY + 1]  # (E, R, W)
        period[ends >= 0] = dominant_periods(win, lead + 1)[which]
    return np.moveaxis(_repeat(y, rows, lead, _with_calendar(period, step_s, lead), REPEATS), 0, -1)


class SeasonalNow:
    """``seasonal_track``'s newest row for a series that grows one row at a time (the live
    engine's workload history): the period is estimated once per ``PERIODIC_REFRESH`` rows."""

    def __init__(self, n_resources: int) -> None:
        self._row = -1
        self._period = np.zeros(n_resources, dtype=np.int64)

    def __call__(self, values: np.ndarray, total: int, lead: int, step_s: float) -> np.ndarray:
        """values: (n, R) the newest rows kept of a series that has had ``total`` rows, the
        last being the newest. Returns (R, 3): the candidates issued now for ``lead`` rows on."""
        values = np.asarray(values, dtype=np.float64)
        n, r_n = values.shape
        row = int(period_rows(np.int64(total - 1)))
        if row != self._row:
            self._row = row
            back = total - 1 - row  # rows after the window's end
            start = n - back - PERIODIC_HISTORY
            self._period = (
                dominant_periods(values[start : n - back].T, lead + 1)
                if row >= 0 and start >= 0
                else np.zeros(r_n, dtype=np.int64)
            )
        periods = _with_calendar(self._period[None], step_s, lead)  # (3, 1, R)
        if not ((periods > lead) & (periods <= n - 1 + lead)).any():
            # nothing reaches back one period (a young workload; a day at 1-s steps): the
            # gather costs ~70 us, a tick's worth at 1000 workloads
            return np.full((r_n, len(SEASONAL)), np.nan)
        return _repeat(values, np.array([n - 1]), lead, periods, REPEATS)[:, 0].T
