"""What a series' own history gives each forecast: the point-forecast candidates, in
``HISTORY`` order -- the seasonal ones (``prae.model.seasonal``) and the analog one
(``prae.model.analogs``) -- and the analog quantiles (the outcomes of the moments most
like now, ``prae.model.combination.blend_analog``).

One place for the backtest (every row of a series at once: ``history_track``) and the live
engine (a workload's newest row each tick: ``HistoryNow``), which agree row for row.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from prae.model.analogs import ANALOG, AnalogRows, analog_now, analog_track
from prae.model.seasonal import SEASONAL, SeasonalNow, seasonal_track

HISTORY: tuple[str, ...] = (*SEASONAL, *ANALOG)


class HistoryRows(NamedTuple):
    """candidates (..., R, H) in ``HISTORY`` order; analog_quantiles (..., R, Q)."""

    candidates: np.ndarray
    analog_quantiles: np.ndarray


def history_track(y: np.ndarray, lead: int, step_s: float, *, analog: bool = True) -> HistoryRows:
    """y (T, R) one series on a regular grid of ``step_s``, row 0 its first -> candidates
    (T, R, H) and analog quantiles (T, R, Q) issued at each row for row + lead, from rows
    <= t only. ``analog`` False: the analog's column and quantiles NaN (no weight in the
    choice, the model's quantiles alone) and its search not run."""
    y = np.asarray(y, dtype=np.float64)
    found = analog_track(y, lead) if analog else AnalogRows.unknown(y.shape)
    candidates = np.concatenate([seasonal_track(y, lead, step_s), found.median[..., None]], axis=-1)
    return HistoryRows(candidates, found.quantiles)


class HistoryNow:
    """``history_track``'s newest row for a series that grows one row at a time (it keeps
    the periodic candidate's period between rows)."""

    def __init__(self, n_resources: int, *, analog: bool = True) -> None:
        self._seasonal = SeasonalNow(n_resources)
        self._analog = analog

    def __call__(self, values: np.ndarray, total: int, lead: int, step_s: float) -> HistoryRows:
        """values: (n, R) the newest rows kept of a series that has had ``total`` rows, the
        last being the newest. Returns the candidates (R, H) and analog quantiles (R, Q)
        issued now for ``lead`` rows on."""
        seasonal = self._seasonal(values, total, lead, step_s)
        found = analog_now(values, lead) if self._analog else AnalogRows.unknown(seasonal.shape[:1])
        return HistoryRows(np.concatenate([seasonal, found.median[:, None]], axis=-1), found.quantiles)
