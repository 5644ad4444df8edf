"""The previous run a ``simulate`` shadow with ``source: history`` plays (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from prae.workloads.history import (
    HISTORY_STEPS,
    from_bytes,
    from_telemetry,
    last_complete_run,
    progress_profile,
    shadow_curve,
)


def test_last_complete_run_is_the_newest_that_reached_the_end() -> None:
    ts = np.arange(12.0)
    # run 1 complete (0 -> 1), run 2 complete, run 3 (progress falls back) stopped at 0.4
    progress = np.array([np.nan, 0.2, 0.6, 1.0, 0.0, 0.5, 0.99, 0.1, 0.2, 0.3, 0.4, 0.4])
    values = np.arange(12.0)[:, None] * np.ones((1, 4))
    run_values, run_progress, duration = last_complete_run(ts[::-1], progress[::-1], values[::-1])  # any order
    np.testing.assert_array_equal(run_progress, [0.0, 0.5, 0.99])
    np.testing.assert_array_equal(run_values[:, 0], [4.0, 5.0, 6.0])
    assert duration == 2.0
    assert last_complete_run(ts[7:], progress[7:], values[7:]) is None  # only the unfinished one
    assert last_complete_run(np.zeros(0), np.zeros(0), np.zeros((0, 4))) is None


def test_a_gap_in_the_samples_starts_a_new_run() -> None:
    ts = np.array([0.0, 1.0, 2.0, 500.0, 501.0])
    progress = np.array([0.2, 0.6, 1.0, 0.7, 0.8])  # the second started late in its progress report
    found = last_complete_run(ts, progress, np.ones((5, 4)))
    assert found is not None and found[2] == 2.0


def test_progress_profile_worked_number_and_empty_bins() -> None:
    out = progress_profile(np.array([[1.0], [3.0], [5.0]]), np.array([0.1, 0.2, 0.9]), steps=2)
    np.testing.assert_allclose(out, [[2.0], [5.0]])
    out = progress_profile(np.array([[1.0], [5.0]]), np.array([0.6, 0.95]), steps=4)
    np.testing.assert_allclose(out[:, 0], [1.0, 1.0, 1.0, 5.0])  # before the first: the first known


def test_from_telemetry_takes_the_live_rows_of_the_last_complete_run() -> None:
    n = 30
    table = pa.table(
        {
            "ts": np.arange(2 * n, dtype=float),
            "role": ["live"] * n + ["shadow"] * n,
            "cpu": np.r_[np.linspace(1, 2, n), np.full(n, 99.0)],
            "mem": np.full(2 * n, 1e8),
            "disk": np.zeros(2 * n),
            "net": np.zeros(2 * n),
            "progress": np.r_[np.linspace(0, 1, n), np.linspace(0, 1, n)],
        }
    )
    profile, duration = from_bytes(from_telemetry(table))
    assert profile.shape == (HISTORY_STEPS, 4) and duration == n - 1
    assert profile[:, 0].min() >= 1.0 and profile[:, 0].max() <= 2.0  # never the shadow's 99
    assert from_telemetry(table.slice(0, n // 2)) is None  # live up to progress 0.5: not complete


def test_shadow_curve_costs_the_fraction_in_a_quarter_of_the_time() -> None:
    profile = np.tile(np.linspace(1.0, 2.0, HISTORY_STEPS)[:, None], (1, 4))
    curve = shadow_curve(profile, duration_s=40.0, fraction=0.05, min_step_s=0.2)
    assert len(curve) == HISTORY_STEPS and np.isclose(curve.step_s * len(curve), 10.0)
    recorded = profile[:, 0].mean() * 40.0  # core-seconds of the previous run
    assert np.isclose((curve.cpu * curve.step_s).sum(), 0.05 * recorded)
    short = shadow_curve(profile, duration_s=8.0, fraction=0.05, min_step_s=0.2)
    assert len(short) == 10 and np.isclose(short.step_s, 0.2)  # merged bins: 2 s in 0.2-s steps
    assert np.isclose((short.cpu * short.step_s).sum(), 0.05 * profile[:, 0].mean() * 8.0)
