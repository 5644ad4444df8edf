"""Training windows from the feedback store (no Ray): what retraining learns from.

Each workload's live telemetry becomes one series; its shadow's telemetry, aligned by
progress exactly as the live loop aligns it (``align_shadow_by_progress``), becomes the
shadow channel, so the model is trained on the same features it is served.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from prae.model.training import TrainingWindows, concat_windows, split_newest
from prae.resources import RESOURCES
from prae.store.feedback import FeedbackStore
from prae.telemetry.alignment import align_shadow_by_progress


def series_from_store(store: FeedbackStore) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """workload -> (live values (N, R), live progress (N,), shadow values (S, R), shadow progress (S,))."""
    table = store.read("telemetry")
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    if table.num_rows == 0:
        return out
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ("ts", "role", "workload", "progress", *RESOURCES)}
    for wl in sorted(set(cols["workload"])):
        parts = []
        for role in ("live", "shadow"):
            m = (cols["workload"] == wl) & (cols["role"] == role)
            order = np.argsort(cols["ts"][m], kind="stable")
            values = np.stack([cols[r][m][order].astype(float) for r in RESOURCES], axis=1)
            parts.append((values, cols["progress"][m][order].astype(float)))
        out[str(wl)] = (parts[0][0], parts[0][1], parts[1][0], parts[1][1])
    return out


class StoreWindows(NamedTuple):
    """What retraining learns from (``train``) and judges on (``holdout``: windows whose
    targets are each workload's newest rows, none of them a training target)."""

    train: TrainingWindows | None
    holdout: TrainingWindows | None
    rows: int  # live rows the windows came from


def windows_from_store(
    store: FeedbackStore,
    window_steps: int,
    horizon_steps: int,
    lead_steps: int,
    holdout_rows: Callable[[int], int] = lambda n: 0,
) -> StoreWindows:
    """All training windows in the store, split by time into train and holdout.

    ``horizon_steps`` is the model's output horizon; ``lead_steps`` is the alignment lead the
    live loop uses (``run.horizon_steps``), so training sees the shadow as serving does.
    ``holdout_rows(n)``: how many of a workload's n newest live rows to hold out (default
    none: every window trains).
    """
    train, held = [], []
    rows = 0
    for live, live_p, shadow, shadow_p in series_from_store(store).values():
        rows += len(live)
        if len(live) <= horizon_steps:
            continue
        aligned = None
        if len(shadow):
            aligned = align_shadow_by_progress(live_p, shadow_p, shadow, lead_steps)
        # Live runs are short next to the model's window (a 90 s job at 1 Hz is 90 rows):
        # left-pad with "missing" so its first minutes train too, exactly as serving pads
        # a young workload's window.
        pad = np.full((window_steps - 1, live.shape[1]), np.nan)
        n = len(live)
        live = np.vstack([pad, live])
        aligned = None if aligned is None else np.vstack([pad, aligned])
        t, h = split_newest(live, aligned, window_steps, horizon_steps, holdout_rows(n))
        if len(t):
            train.append(t)
        if len(h):
            held.append(h)
    return StoreWindows(
        concat_windows(train) if train else None, concat_windows(held) if held else None, rows
    )
