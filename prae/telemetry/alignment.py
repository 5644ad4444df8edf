"""Line the shadow's telemetry up with the live workload by progress, not by time.

The shadow runs the same work on a fraction of the data, so it moves through its phases
1/fraction times faster and finishes early: at wall-clock time t it is far ahead. What the
predictor wants at live step t is what the shadow did at the point the live workload is
about to reach, i.e. at live progress p(t + lead). Pure numpy, no Ray.
"""

from __future__ import annotations

import numpy as np

from prae.resources import RESOURCES

# Live progress rate = slope over this many recent steps (fewer at the start).
RATE_WINDOW = 5
# Where in its interval a live sample's values sit, in steps before the sample.
MIDPOINT = 0.5
_EPS = 1e-9


def expected_progress(
    live_progress: np.ndarray, lead_steps: float, rate_window: int = RATE_WINDOW
) -> np.ndarray:
    """Live progress expected ``lead_steps`` after each step, shape (T,).

    Linear extrapolation of the last ``rate_window`` steps' slope; e.g. progress 0.40 rising
    0.01 per step, lead 5 → 0.45 (lead 4.5 → 0.445). Capped at 1; NaN where progress is unknown.
    """
    p = np.asarray(live_progress, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"live_progress must have shape (T,), got {p.shape}")
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    if idx.size == 0:
        return out
    # For each known step, the oldest known step at most rate_window steps before it.
    first = idx[np.searchsorted(idx, idx - rate_window, side="left")]
    span = idx - first
    rate = np.where(span > 0, (p[idx] - p[first]) / np.maximum(span, 1), 0.0)
    out[idx] = np.minimum(1.0, p[idx] + np.maximum(0.0, rate) * lead_steps)
    return out


def align_shadow_by_progress(
    live_progress: np.ndarray,
    shadow_progress: np.ndarray,
    shadow_values: np.ndarray,
    lead_steps: int,
    *,
    live_ts: np.ndarray | None = None,
    shadow_ts: np.ndarray | None = None,
    rate_window: int = RATE_WINDOW,
) -> np.ndarray:
    """The shadow's telemetry at the progress the live workload is expected to reach.

    live_progress  shape (T,): the live workload's progress (0..1, NaN if unknown) per step.
    shadow_progress shape (S,): the shadow's progress per sample, non-decreasing-ish.
    shadow_values  shape (S, 4): the shadow's samples, RESOURCES order (cpu, mem, disk, net).
    lead_steps     how many live steps ahead to look (the forecast horizon).
    live_ts, shadow_ts  optional unix times, shapes (T,) and (S,): row t then uses only shadow
                   samples taken at or before live_ts[t], so a backtest never sees the future.
    Returns shape (T, 4).

    Row t is the shadow sample during whose interval the shadow first reached progress
    p* = expected_progress(t): rates in a sample are averages over the interval ending at it,
    so that interval is the one that contains p*. A dip in the shadow's progress is ignored
    (its running maximum is used). NaN where p* is unknown, where the shadow has no sample
    with known progress yet, or where p* is beyond the furthest progress the shadow has seen.

    No rescaling: values are the shadow's own, measured on the reduced dataset. Rates (cpu,
    disk, net) of a sample-mode shadow are comparable to the live ones (same code at the same
    speed on less data, per core), memory is lower (roughly a fixed base plus fraction × the
    data-dependent part), and the predictor normalises each input series itself.
    """
    p_live = np.asarray(live_progress, dtype=np.float64)
    p_sh = np.asarray(shadow_progress, dtype=np.float64)
    v_sh = np.asarray(shadow_values, dtype=np.float64)
    if (
        p_sh.ndim != 1
        or v_sh.ndim != 2
        or v_sh.shape[0] != p_sh.shape[0]
        or v_sh.shape[1] != len(RESOURCES)
    ):
        raise ValueError(
            f"shadow_progress must be (S,) and shadow_values (S, {len(RESOURCES)}), "
            f"got {p_sh.shape} and {v_sh.shape}"
        )
    if lead_steps < 0:
        raise ValueError(f"lead_steps must be >= 0, got {lead_steps}")
    # A live sample's rates are averages over the interval that ends at it, so the progress
    # they belong to is the middle of that interval, half a step before the progress
    # reported at the sample. Aligning on the reported progress put the shadow's value half
    # to one live step late, by the (random) phase between sampling and the workload's
    # steps: a replay's disk bursts matched the live run one step later (correlation 0.96
    # at a one-step shift, 0.18 at none) in one run and without a shift in another.
    target = expected_progress(p_live, lead_steps - MIDPOINT, rate_window)
    out = np.full((p_live.shape[0], v_sh.shape[1]), np.nan)
    known = ~np.isnan(p_sh)
    if not known.any():
        return out
    sh_idx = np.flatnonzero(known)
    reach = np.maximum.accumulate(p_sh[sh_idx])  # furthest progress seen up to each sample
    if live_ts is None or shadow_ts is None:
        visible = np.full(p_live.shape[0], len(sh_idx))
    else:
        lt = np.asarray(live_ts, dtype=np.float64)
        st = np.asarray(shadow_ts, dtype=np.float64)[sh_idx]
        if lt.shape != p_live.shape:
            raise ValueError(f"live_ts must have shape {p_live.shape}, got {lt.shape}")
        visible = np.searchsorted(st, lt, side="right")  # shadow samples taken by then
    target = target - _EPS  # 0.2 + 0.1 must find a sample at 0.3
    # reach is non-decreasing: the first sample at or past the target, if it was visible.
    i = np.searchsorted(reach, np.nan_to_num(target, nan=np.inf), side="left")
    ok = ~np.isnan(target) & (i < visible)
    out[ok] = v_sh[sh_idx[i[ok]]]
    return out
