"""The rule that forecasts when the predictor service cannot be reached.

Never the best forecast, always an available one: the allocator keeps working while the
Serve app restarts or is being hot-swapped, and the rows it produces are marked
``source="fallback"`` in the feedback store.
"""

from __future__ import annotations

import warnings

import numpy as np

from prae.resources import QUANTILES

# Upper quantiles above the recent maximum: q0.95 = max × 1.1, q0.99 = max × 1.25.
_TAIL_FACTORS = {0.95: 1.1, 0.99: 1.25}


def rule_forecast(live: np.ndarray, horizon_steps: int, recent_steps: int = 12) -> np.ndarray:
    """Quantiles from the recent window, held flat over the horizon.

    live: (B, T, R) raw units, NaN = missing. Returns (B, horizon_steps, R, len(QUANTILES)):
    q0.5 = last observed value, q0.1 = recent 10th percentile (capped at the last value),
    q0.9 = recent maximum, the tail a fixed factor above it. Non-decreasing along quantiles.
    """
    b, _, r = live.shape
    recent = live[:, -recent_steps:, :]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no history yet
        last = _last_valid(live)
        lo = np.nan_to_num(np.nanpercentile(recent, 10, axis=1), nan=0.0)
        hi = np.nan_to_num(np.nanmax(recent, axis=1), nan=0.0)
    per_q = []
    for q in QUANTILES:
        if q < 0.5:
            per_q.append(np.minimum(lo, last))
        elif q == 0.5:
            per_q.append(last)
        elif q in _TAIL_FACTORS:
            per_q.append(np.maximum(hi, last) * _TAIL_FACTORS[q])
        else:
            per_q.append(np.maximum(hi, last))
    out = np.maximum.accumulate(np.stack(per_q, axis=-1), axis=-1)  # (B, R, Q)
    out = np.clip(out, 0.0, None)
    return np.broadcast_to(out[:, None, :, :], (b, horizon_steps, r, len(QUANTILES))).copy()


def _last_valid(x: np.ndarray) -> np.ndarray:
    """(B, T, R) -> (B, R): the last non-NaN value along T, 0 where there is none."""
    valid = ~np.isnan(x)
    idx = np.where(valid, np.arange(x.shape[1])[None, :, None], -1).max(axis=1)
    picked = np.take_along_axis(x, np.clip(idx, 0, None)[:, None, :], axis=1)[:, 0, :]
    return np.where(idx >= 0, picked, 0.0)
