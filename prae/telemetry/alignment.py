"""Line the shadow's telemetry up with the live workload by progress, not by time.

The shadow runs the same work on a fraction of the data, so it moves through its phases
1/fraction times faster and finishes early: at wall-clock time t it is far ahead. What the
predictor wants at live step t is what the shadow did over the progress the live workload
is about to cover, i.e. in the live sample at t + lead. Pure numpy, no Ray.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from prae.resources import RESOURCES

# Live progress rate = slope over this many recent steps (fewer at the start).
RATE_WINDOW = 5
# Where in its interval a live sample's values sit, in steps before the sample.
MIDPOINT = 0.5
_EPS = 1e-9
_MAX_GATHER = 1 << 16  # (row, sample) pairs gathered per pass of _span_means


def expected_progress(
    live_progress: np.ndarray, lead_steps: float, rate_window: int = RATE_WINDOW
) -> np.ndarray:
    """Live progress expected ``lead_steps`` after each step, shape (T,).

    Linear extrapolation of the last ``rate_window`` steps' slope; e.g. progress 0.40 rising
    0.01 per step, lead 5 → 0.45 (lead 4.5 → 0.445). Capped at 1; NaN where progress is unknown.
    """
    return _progress_rate(live_progress, rate_window)(lead_steps)


def _progress_rate(live_progress: np.ndarray, rate_window: int) -> Callable[[float], np.ndarray]:
    """``expected_progress`` for any lead, from one pass over the progress: lead -> (T,)."""
    p = np.asarray(live_progress, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"live_progress must have shape (T,), got {p.shape}")
    idx = np.flatnonzero(~np.isnan(p))
    rate = np.zeros(idx.shape)
    if idx.size:
        # For each known step, the oldest known step at most rate_window steps before it.
        first = idx[np.searchsorted(idx, idx - rate_window, side="left")]
        span = idx - first
        rate = np.maximum(0.0, np.where(span > 0, (p[idx] - p[first]) / np.maximum(span, 1), 0.0))

    def at(lead_steps: float) -> np.ndarray:
        out = np.full(p.shape, np.nan)
        out[idx] = np.minimum(1.0, p[idx] + rate * lead_steps)
        return out

    return at


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
    """The shadow's telemetry over the progress the live workload is expected to cover.

    live_progress  shape (T,): the live workload's progress (0..1, NaN if unknown) per step.
    shadow_progress shape (S,): the shadow's progress per sample, non-decreasing-ish.
    shadow_values  shape (S, 4): the shadow's samples, RESOURCES order (cpu, mem, disk, net).
    lead_steps     how many live steps ahead to look (the forecast horizon).
    live_ts, shadow_ts  optional unix times, shapes (T,) and (S,): row t then uses only shadow
                   samples taken at or before live_ts[t], so a backtest never sees the future.
    Returns shape (T, 4).

    Row t is the live sample ``lead_steps`` after step t as the shadow lived it. That
    sample's rates will be averages over its interval, which covers the live progress from
    ``expected_progress(t, lead - 1)`` to ``expected_progress(t, lead)`` (the span); each
    shadow sample is an average over its own interval, from the progress of the sample
    before it to its own. So row t is the mean of the shadow's samples over the span, each
    weighted by how much of the span its interval covers (``_span_means``). Where the span
    has no length (the live progress stood still) or no sample's interval overlaps it, row
    t is the sample during whose interval the shadow first reached the span's middle. A dip
    in the shadow's progress is ignored (its running maximum is used). NaN where the live
    progress is unknown or the shadow has not yet been seen past the span's end (so a row,
    once known, never changes as later samples arrive).

    Worked number: a replay shadow sampled twice per live step reads 0.1 and 0.3 cores over
    the two halves of a span: the row is 0.2, where the sample at the middle said 0.1 or
    0.3. Re-scoring a shadow-ablation collection (``bench/shadow_ablation.py --reuse``), the
    replay's ``shadow_level`` erred 0.240 / 0.292 at phase changes on disk / network against
    0.365 / 0.589 with the one sample.

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
    # A live sample's rates are averages over the interval that ends at it: the span runs
    # from the progress one step before the target to the target. Aligning a single
    # point on the reported progress put the shadow's value half to one live step late, by
    # the (random) phase between sampling and the workload's steps: a replay's disk bursts
    # matched the live run one step later (correlation 0.96 at a one-step shift, 0.18 at
    # none) in one run and without a shift in another.
    expected = _progress_rate(p_live, rate_window)
    lo, mid, hi = expected(lead_steps - 1), expected(lead_steps - MIDPOINT), expected(lead_steps)
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
    # reach is non-decreasing: the first sample at or past a progress (0.2 + 0.1 must find
    # a sample at 0.3, hence the epsilon). The row is known once that sample for the
    # span's end was visible: every sample whose interval overlaps the span is then too.
    unknown = np.isnan(hi)
    end = np.searchsorted(reach, np.where(unknown, np.inf, hi - _EPS), side="left")
    ok = ~unknown & (end < visible)
    if not ok.any():
        return out
    at_mid = np.searchsorted(reach, mid[ok] - _EPS, side="left")
    out[ok] = _span_means(reach, v_sh, sh_idx, lo[ok], hi[ok], at_mid)
    return out


def _span_means(
    reach: np.ndarray,
    values: np.ndarray,
    rows: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    at_mid: np.ndarray,
) -> np.ndarray:
    """Per span [lo, hi] (shape (n,)), the mean of the samples' values (``values[rows]``,
    (S, R), the samples with a known progress, whose running maximum is ``reach``) weighted by
    how much of the span each sample's interval (reach[j - 1], reach[j]] covers, per
    resource over the samples that know it; the sample ``at_mid`` (n,) where no known
    sample's interval overlaps the span with any length. The first sample's interval has
    no length (where it began is not known).

    Each span sums its own samples only, in their order (a running sum, so a span's value
    does not depend on how many samples other spans cover): a row comes out the same
    whichever other rows are asked for (the engine aligns a few new rows at a time and
    must get what aligning the whole history gives, bit for bit). A call costs the samples
    the spans cover -- one or two per span for a 5 % shadow sampled 5x as often (a quarter
    of a sample per live step) -- not the shadow's whole history: with prefix sums over
    it a call took ~0.2-0.3 ms at 4096 shadow samples, ~0.1 ms so (0.05 ms for the one
    sample at the middle before)."""
    last = len(reach) - 1
    first_k = np.minimum(np.searchsorted(reach, lo, side="left"), last)  # the sample holding lo
    last_k = np.minimum(np.searchsorted(reach, hi, side="left"), last)
    width = int((last_k - first_k).max(initial=0)) + 1  # samples the widest span covers
    out = np.empty((len(lo), values.shape[1]))
    step = max(1, _MAX_GATHER // width)  # rows per pass: a span over many samples is rare
    for a in range(0, len(lo), step):
        b = min(len(lo), a + step)
        ks = first_k[a:b, None] + np.arange(width)  # (n, width)
        inside = ks <= last_k[a:b, None]
        ks = np.minimum(ks, last)
        start = reach[np.maximum(ks - 1, 0)]  # the first sample starts where it ends
        cover = np.minimum(reach[ks], hi[a:b, None]) - np.maximum(start, lo[a:b, None])
        cover = np.where(inside, np.maximum(cover, 0.0), 0.0)[..., None]  # (n, width, 1)
        vals = values[rows[ks]]  # (n, width, R)
        has = ~np.isnan(vals)
        w = np.cumsum(cover * has, axis=1)[:, -1]
        m = np.cumsum(cover * np.where(has, vals, 0.0), axis=1)[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a:b] = np.where(w > 1e-12 * np.maximum(hi[a:b] - lo[a:b], _EPS)[:, None], m / w, values[rows[at_mid[a:b]]])
    return out
