"""A workload's previous run, played by its shadow: ``shadow: {mode: simulate, source: history}``.

A recurring job (a nightly ETL, a periodic retraining) does at each point of its progress
much what it did last time, at a size set by its input. Its previous complete live run,
from the feedback store's telemetry, is binned by progress into ``HISTORY_STEPS`` steps
(the mean of each resource per bin) and played as a resource curve by the shadow, like a
profile's phases (:mod:`prae.workloads.simulate`): ``fraction`` of the cost, in a quarter
of the recorded time, its progress reported as it goes. The predictor then sees what the live run did
at the progress it is about to reach, in the same units the live telemetry has -- for
phases a 5 % *sample* cannot show (a 5 % ETL's join never saturates a core; a 5 % training
run writes its checkpoint in one 0.1-s sample).

The first run of a workload has no history: its shadow does not start, and the run
says why (the live run is not affected). Pure numpy: the engine finds the run, the shadow
process plays it; nothing here imports Ray.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import numpy as np

from prae.config import WorkloadSpec
from prae.resources import RESOURCES
from prae.workloads.curve import Curve

HISTORY_STEPS = 50
# A run is complete when its progress reached this; a new run starts where progress falls
# back by more than RESTART_DROP or after a gap in the samples longer than GAP_S.
COMPLETE_AT = 0.99
RESTART_DROP = 0.5
GAP_S = 60.0
SHADOW_SPAN = 0.25  # the shadow plays the previous run in this share of its duration


def last_complete_run(
    ts: np.ndarray, progress: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """The newest complete run in one workload's live telemetry.

    ts: shape (N,) seconds; progress: shape (N,) 0..1 (NaN = not reported yet);
    values: shape (N, R). Any order. Returns (values (T, R), progress (T,), duration
    seconds) of the samples with a progress, or None when no run reached ``COMPLETE_AT``.
    """
    ts = np.asarray(ts, dtype=np.float64)
    order = np.argsort(ts, kind="stable")
    ts, progress = ts[order], np.asarray(progress, dtype=np.float64)[order]
    values = np.asarray(values, dtype=np.float64)[order]
    if len(ts) == 0:
        return None
    starts = [0]
    last_p = -math.inf
    for i in range(1, len(ts)):
        p = progress[i]
        if ts[i] - ts[i - 1] > GAP_S or (not np.isnan(p) and p < last_p - RESTART_DROP):
            starts.append(i)
            last_p = -math.inf
        if not np.isnan(p):
            last_p = p
    bounds = [*starts, len(ts)]
    for lo, hi in reversed(list(zip(bounds[:-1], bounds[1:], strict=True))):
        p = progress[lo:hi]
        known = ~np.isnan(p)
        if known.any() and np.nanmax(p) >= COMPLETE_AT:
            return values[lo:hi][known], p[known], float(ts[hi - 1] - ts[lo])
    return None


def progress_profile(values: np.ndarray, progress: np.ndarray, steps: int = HISTORY_STEPS) -> np.ndarray:
    """(steps, R): the mean of each resource over the samples whose progress falls in each
    of ``steps`` equal bins of [0, 1]; a bin without samples repeats the one before (the
    first known one at the start). Worked number: progress [0.1, 0.2, 0.9], cpu [1, 3, 5],
    2 steps -> [[2], [5]]."""
    values = np.asarray(values, dtype=np.float64)
    progress = np.clip(np.asarray(progress, dtype=np.float64), 0.0, 1.0)
    idx = np.minimum((progress * steps).astype(np.int64), steps - 1)
    out = np.full((steps, values.shape[1]), np.nan)
    for b in range(steps):
        rows = values[idx == b]
        if len(rows):
            with warnings.catch_warnings():  # a resource all NaN in the bin: stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                out[b] = np.nanmean(rows, axis=0)
    for b in range(1, steps):
        out[b] = np.where(np.isnan(out[b]), out[b - 1], out[b])
    first = np.argmax(~np.isnan(out), axis=0)  # per resource, the first known bin
    for r, f in enumerate(first):
        out[:f, r] = out[f, r]
    return np.nan_to_num(out, nan=0.0)


def shadow_curve(profile: np.ndarray, duration_s: float, fraction: float, min_step_s: float) -> Curve:
    """What the shadow plays: the previous run in ``SHADOW_SPAN`` of its duration, at
    ``fraction / SHADOW_SPAN`` of its amplitude (so it costs ``fraction`` of the run), in
    as many of the profile's steps as the shadow's sampling resolves (>= ``min_step_s``
    each; bins merged by their mean).

    Why a quarter of the duration, not ``fraction`` of it like a sample: the previous run
    is known whole from the start, so the shadow need not hurry to learn it, only stay
    ahead of the live run by the forecast's horizon even when this run goes faster than
    the last (half the duration was not enough: a training job that ran in 23 s beside a
    sample shadow ran in 13 s beside this one, and its shadow fell behind); a 5 % run of
    a 40-s job would last 2 s, resolved in 10 samples. Worked number: 50 bins of a 40-s
    run, fraction 0.05, 0.2-s steps -> 10 s in 50 steps of 0.2 s at 1/5 of the
    amplitude; 2 resource-seconds per recorded 40, i.e. 5 %.
    """
    span = SHADOW_SPAN * float(duration_s)
    steps = int(np.clip(math.floor(span / max(min_step_s, 1e-3) + 1e-9), 2, len(profile)))
    merged = np.stack([part.mean(axis=0) for part in np.array_split(np.asarray(profile, float), steps)])
    scale = fraction / SHADOW_SPAN
    cpu, mem, disk, net = (np.maximum(merged[:, r], 0.0) * scale for r in range(4))
    return Curve(cpu, mem, disk, net, max(span / steps, 1e-3), ("history",) * steps)


def to_bytes(profile: np.ndarray, duration_s: float) -> bytes:
    """What travels to the shadow's host: a small .npz (50 x 4 floats)."""
    buf = io.BytesIO()
    np.savez(buf, profile=np.asarray(profile, dtype=np.float64), duration_s=np.float64(duration_s))
    return buf.getvalue()


def from_bytes(data: bytes) -> tuple[np.ndarray, float]:
    with np.load(io.BytesIO(data)) as z:
        return np.array(z["profile"]), float(z["duration_s"])



def from_telemetry(table: Any) -> bytes | None:
    """The previous complete live run in one workload's telemetry rows (a table with
    ``ts``, ``role``, ``progress`` and the resource columns, e.g. ``FeedbackStore.read``),
    ready for its shadow's host; None when there is none yet."""
    if table.num_rows == 0:
        return None
    live = np.asarray(table.column("role").to_numpy(zero_copy_only=False)) == "live"

    def col(name: str) -> np.ndarray:
        return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)[live]

    return from_samples(col("ts"), col("progress"), np.stack([col(r) for r in RESOURCES], axis=1))


def from_samples(ts: np.ndarray, progress: np.ndarray, values: np.ndarray) -> bytes | None:
    """The newest complete run in live samples (shapes (N,), (N,), (N, R)), ready for a
    shadow's host; None when there is none."""
    found = last_complete_run(ts, progress, values)
    if found is None:
        return None
    run_values, run_progress, duration_s = found
    return to_bytes(progress_profile(run_values, run_progress), duration_s)


def plays_history(spec: WorkloadSpec) -> bool:
    """Whether a workload's shadow plays its previous run."""
    return spec.shadow_plays_curve and spec.shadow.source == "history"
