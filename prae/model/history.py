"""The point-forecast candidates a series' own history gives, in ``HISTORY`` order: the
seasonal ones (``prae.model.seasonal``) and the analog one (``prae.model.analogs``).

One place for the backtest (every row of a series at once: ``history_track``) and the live
engine (a workload's newest row each tick: ``HistoryNow``), which agree row for row.
"""

from __future__ import annotations

import numpy as np

from prae.model.analogs import ANALOG, analog_now, analog_track
from prae.model.seasonal import SEASONAL, SeasonalNow, seasonal_track

HISTORY: tuple[str, ...] = (*SEASONAL, *ANALOG)


def history_track(y: np.ndarray, lead: int, step_s: float, *, analog: bool = True) -> np.ndarray:
    """y (T, R) one series on a regular grid of ``step_s``, row 0 its first -> (T, R, H):
    the candidates issued at each row for row + lead, from rows <= t only. ``analog``
    False: that column NaN (no weight in the choice) and its search not run."""
    y = np.asarray(y, dtype=np.float64)
    found = analog_track(y, lead) if analog else np.full(y.shape, np.nan)
    return np.concatenate([seasonal_track(y, lead, step_s), found[..., None]], axis=-1)


class HistoryNow:
    """``history_track``'s newest row for a series that grows one row at a time (it keeps
    the periodic candidate's period between rows)."""

    def __init__(self, n_resources: int, *, analog: bool = True) -> None:
        self._seasonal = SeasonalNow(n_resources)
        self._analog = analog

    def __call__(self, values: np.ndarray, total: int, lead: int, step_s: float) -> np.ndarray:
        """values: (n, R) the newest rows kept of a series that has had ``total`` rows, the
        last being the newest. Returns (R, H): the candidates issued now for ``lead`` rows on."""
        seasonal = self._seasonal(values, total, lead, step_s)
        found = analog_now(values, lead) if self._analog else np.full(seasonal.shape[0], np.nan)
        return np.concatenate([seasonal, found[:, None]], axis=-1)
