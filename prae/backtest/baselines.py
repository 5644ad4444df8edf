"""Baseline forecasters/recommenders, causal and vectorised over series.

Every function takes ``y``: shape (S, T, R) usage on a shared grid (NaN = missing or
outside the series) and returns shape (S, T, R): the value each baseline would give at
issue step t (using rows <= t only) for the target ``lead`` steps later. NaN where a
baseline has nothing to say yet (callers fall back to ``last_value``).

    last_value      reactive: the last observation (what Ray's autoscaler effectively does)
    window_max      max over the last hour
    vpa             Kubernetes VPA recommender: decaying histogram (half-life 24 h),
                    p90, times a 15 % safety margin
    autopilot       Google Autopilot moving window: decaying histograms, half-life 12 h
                    (CPU, disk, net) / 48 h (mem), p95 (CPU, disk, net) / p98 (mem), then
                    the max of that recommendation over the last hour
    seasonal_naive  the value one season (a day) before the target
    oracle          the target itself (a lower bound, not a forecaster)
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Histogram buckets as in VPA: geometric, 5 % apart. Scale-free: they are laid out around
# each series' first positive observation ``ref`` (causal): ref * 1.05**(k - 250),
# k = 1..549, i.e. from ~5e-6 * ref to ~2e5 * ref; bucket 0 holds zeros.
BUCKET_RATIO = 1.05
N_BUCKETS = 550
_BELOW = 250


def last_value(y: np.ndarray) -> np.ndarray:
    """Carry the last observation forward. y: (S, T, R) -> (S, T, R)."""
    s, t, r = y.shape
    idx = np.where(~np.isnan(y), np.arange(t)[None, :, None], -1)
    idx = np.maximum.accumulate(idx, axis=1)
    out = np.take_along_axis(y, np.maximum(idx, 0), axis=1)
    return np.where(idx >= 0, out, np.nan)


def window_max(y: np.ndarray, steps: int) -> np.ndarray:
    """Max of the observations in the last ``steps`` rows (inclusive of t)."""
    s, t, r = y.shape
    pad = np.concatenate([np.full((s, steps - 1, r), np.nan), y], axis=1)
    win = sliding_window_view(pad, steps, axis=1)  # (S, T, R, steps)
    with np.errstate(all="ignore"):
        filled = np.where(np.isnan(win), -np.inf, win).max(axis=-1)
    return np.where(np.isfinite(filled), filled, np.nan)


def seasonal_naive(y: np.ndarray, lead: int, season: int) -> np.ndarray:
    """y[t + lead - season] (known at t when lead <= season); NaN before one season."""
    shift = season - lead
    if shift < 0:
        raise ValueError(f"lead ({lead} steps) must not exceed the season ({season} steps)")
    out = np.full_like(y, np.nan)
    if shift < y.shape[1]:
        out[:, shift:] = y[:, : y.shape[1] - shift]
    return out


def oracle(y: np.ndarray, lead: int) -> np.ndarray:
    out = np.full_like(y, np.nan)
    out[:, : y.shape[1] - lead] = y[:, lead:]
    return out


def decaying_percentile(
    y: np.ndarray, half_life_steps: np.ndarray, percentile: np.ndarray
) -> np.ndarray:
    """Percentile of an exponentially decaying histogram of everything seen so far.

    y: (S, T, R); half_life_steps, percentile: (R,). Sample t gets weight
    2 ** (t / half_life) (newer samples weigh more; a sample one half-life old counts
    half). The answer is the upper edge of the bucket where the cumulative weight first
    reaches ``percentile`` of the total, as VPA's histogram does.
    Worked number: half-life 24 h on a 5-min grid = 288 steps; a day-old sample weighs
    0.5 against a new one, a week-old one 1/128.
    """
    s, t, r = y.shape
    hist = np.zeros((s, r, N_BUCKETS))
    ref = np.full((s, r), np.nan)
    log_ratio = np.log(BUCKET_RATIO)
    out = np.full((s, t, r), np.nan)
    rate = np.log(2.0) / np.asarray(half_life_steps, dtype=np.float64)  # (R,)
    pct = np.asarray(percentile, dtype=np.float64)[None, :, None]
    si, ri = np.meshgrid(np.arange(s), np.arange(r), indexing="ij")
    base = 0  # renormalisation offset (weights are relative to step ``base``)
    for i in range(t):
        v = y[:, i, :]
        ok = ~np.isnan(v)
        new_ref = np.isnan(ref) & ok & (v > 0)
        ref = np.where(new_ref, v, ref)
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.floor(np.log(v / ref) / log_ratio).astype(np.int64) + _BELOW + 1
        k = np.where(v > 0, np.clip(k, 1, N_BUCKETS - 1), 0)
        w = np.exp(rate * (i - base))  # (R,)
        if w.max() > 1e150:
            hist /= w[None, :, None]
            base = i
            w = np.ones_like(w)
        add = np.where(ok, w[None, :], 0.0)
        hist[si, ri, np.where(ok, k, 0)] += add
        cum = np.cumsum(hist, axis=-1)
        total = cum[..., -1:]
        b = np.argmax(cum >= pct * total - 1e-300, axis=-1)  # (S, R)
        edge = np.where(b == 0, 0.0, ref * BUCKET_RATIO ** (np.minimum(b, N_BUCKETS - 1) - _BELOW))
        edge = np.where(np.isnan(ref) & (total[..., 0] > 0), 0.0, edge)  # only zeros seen
        out[:, i, :] = np.where(total[..., 0] > 0, edge, np.nan)
    return out


def vpa(y: np.ndarray, steps_per_hour: float) -> np.ndarray:
    """VPA target: p90 of a 24-h half-life decaying histogram, plus a 15 % margin."""
    r = y.shape[2]
    hl = np.full(r, 24 * steps_per_hour)
    return 1.15 * decaying_percentile(y, hl, np.full(r, 0.90))


def autopilot(y: np.ndarray, steps_per_hour: float, mem_index: int = 1) -> np.ndarray:
    """Autopilot moving window: p95 / 12 h (p98 / 48 h for memory), then max over 1 h."""
    r = y.shape[2]
    hl = np.full(r, 12 * steps_per_hour)
    pct = np.full(r, 0.95)
    hl[mem_index], pct[mem_index] = 48 * steps_per_hour, 0.98
    rec = decaying_percentile(y, hl, pct)
    return window_max(rec, max(1, int(round(steps_per_hour))))


BASELINES: tuple[str, ...] = (
    "last_value",
    "max_1h",
    "vpa",
    "autopilot",
    "seasonal_naive",
    "oracle",
)


def all_baselines(
    y: np.ndarray, lead: int, step_s: float, season_s: float = 86400.0
) -> dict[str, np.ndarray]:
    """Every baseline for issue steps of ``y`` (S, T, R), same shape each.

    Before a baseline has history (seasonal naive's first day) it falls back to the
    last value, so all policies are scored on the same steps.
    """
    sph = 3600.0 / step_s
    lv = last_value(y)

    def fill(x: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(x), lv, x)

    return {
        "last_value": lv,
        "max_1h": fill(window_max(y, max(1, int(round(sph))))),
        "vpa": fill(vpa(y, sph)),
        "autopilot": fill(autopilot(y, sph)),
        "seasonal_naive": fill(seasonal_naive(y, lead, max(lead, int(round(season_s / step_s))))),
        "oracle": oracle(y, lead),
    }
