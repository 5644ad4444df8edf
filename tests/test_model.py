"""The forecaster: predictor contract, training, checkpoints, calibration. No Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prae.errors import CheckpointError
from prae.model import (
    ConformalCalibrator,
    ModelConfig,
    Predictor,
    builtin_checkpoint_path,
    concat_windows,
    fit,
    windows_from_series,
)
from prae.model.calibration import CalibrationBank
from prae.resources import QUANTILES

TINY = ModelConfig(window_steps=16, horizon_steps=4, hidden_size=16)


def make_series(n: int = 300, seed: int = 0, level: float = 4.0) -> np.ndarray:
    """A noisy daily-ish pattern in raw units: cores, bytes, bytes/s, bytes/s."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    base = 1.0 + 0.5 * np.sin(2 * np.pi * t / 48)
    scales = np.array([level, 2e9, 1e6, 5e5])
    x = base[:, None] * scales * rng.lognormal(0, 0.2, size=(n, 4))
    return x


@pytest.fixture(scope="module")
def tiny_trained() -> Predictor:
    p = Predictor.create(TINY, seed=0)
    w = concat_windows(
        [windows_from_series(make_series(seed=s), None, 16, 4, stride=2) for s in range(3)]
    )
    fit(p, w, epochs=2, seed=0, batch_size=64)
    return p


def test_predict_shape_monotone_nonnegative(tiny_trained: Predictor) -> None:
    live = make_series(40)[None].repeat(3, axis=0)
    out = tiny_trained.predict(live)
    assert out.shape == (3, 4, 4, len(QUANTILES))
    assert out.dtype == np.float32
    assert (out >= 0).all()
    assert (np.diff(out, axis=-1) >= 0).all()
    assert tiny_trained.quantiles == QUANTILES


def test_predict_short_long_and_missing_windows(tiny_trained: Predictor) -> None:
    x = make_series(40)[None]
    short = tiny_trained.predict(x[:, -3:])  # left-padded with NaN
    long = tiny_trained.predict(x)  # truncated to the last 16 steps
    assert np.allclose(long, tiny_trained.predict(x[:, -16:]))
    assert np.isfinite(short).all()
    gappy = x.copy()
    gappy[0, ::3] = np.nan
    gappy[0, :, 2] = np.nan  # disk never observed -> forecast 0
    out = tiny_trained.predict(gappy)
    assert np.isfinite(out).all() and (out[0, :, 2] == 0).all()


def test_scale_free(tiny_trained: Predictor) -> None:
    x = make_series(16)[None]
    a = tiny_trained.predict(x)
    b = tiny_trained.predict(x * 64.0)
    np.testing.assert_allclose(b, a * 64.0, rtol=1e-4)


def test_shadow_rows_accepted(tiny_trained: Predictor) -> None:
    x = make_series(16)[None].repeat(2, axis=0)
    shadow = np.full_like(x, np.nan)
    shadow[1] = x[1] * 0.1
    out = tiny_trained.predict(x, shadow)
    assert out.shape == (2, 4, 4, 5)
    np.testing.assert_allclose(out[0], tiny_trained.predict(x[:1])[0], rtol=1e-5)


def test_large_batch() -> None:
    p = Predictor.create(TINY)
    out = p.predict(np.random.default_rng(0).random((9000, 16, 4)))
    assert out.shape == (9000, 4, 4, 5)


def test_fit_is_deterministic_and_changes_version() -> None:
    w = windows_from_series(make_series(200), None, 16, 4)
    a, b = Predictor.create(TINY, seed=1), Predictor.create(TINY, seed=1)
    v0 = a.version
    ra = fit(a, w, epochs=2, seed=3, batch_size=32)
    rb = fit(b, w, epochs=2, seed=3, batch_size=32)
    assert ra == rb and set(ra) >= {"loss", "val_loss"}
    assert a.version == b.version != v0


def test_fit_reduces_loss() -> None:
    w = windows_from_series(make_series(400), None, 16, 4)
    p = Predictor.create(TINY, seed=0)
    first = fit(p, w, epochs=1, seed=0, batch_size=32)["val_loss"]
    later = fit(p, w, epochs=2, seed=0, batch_size=32)["val_loss"]
    assert later < first


def test_windows_and_concat() -> None:
    x = make_series(50)
    w = windows_from_series(x, None, 16, 4, stride=1)
    assert len(w) == 50 - 20 + 1
    live, shadow, y = w.batch(np.array([0, 5]))
    assert live.shape == (2, 16, 4) and y.shape == (2, 4, 4) and shadow is None
    np.testing.assert_allclose(y[1], x[21:25].astype(np.float32))
    both = concat_windows([w, windows_from_series(x[:30], x[:30] * 0.5, 16, 4)])
    assert len(both) == len(w) + 11
    _, sh, _ = both.batch(np.array([0, len(w)]))
    assert np.isnan(sh[0]).all() and np.isfinite(sh[1]).all()
    assert len(windows_from_series(x[:10], None, 16, 4)) == 0


def test_checkpoint_round_trip(tmp_path: Path, tiny_trained: Predictor) -> None:
    path = tmp_path / "sub" / "m.pt"
    tiny_trained.save(path, metadata={"note": "test"})
    back = Predictor.load(path)
    x = make_series(30)[None]
    np.testing.assert_array_equal(back.predict(x), tiny_trained.predict(x))
    assert back.version == tiny_trained.version
    assert back.metadata["note"] == "test"
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temp file left


def test_checkpoint_errors_say_the_fix(tmp_path: Path, tiny_trained: Predictor) -> None:
    with pytest.raises(CheckpointError, match="not found.*Fix"):
        Predictor.load(tmp_path / "nope.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pt.*Fix"):
        Predictor.load(bad)
    good = tmp_path / "good.pt"
    tiny_trained.save(good)
    blob = torch.load(good, weights_only=True)
    blob["state_dict"]["head.2.weight"] = torch.zeros(3, 3)
    torch.save(blob, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="shape.*Fix"):
        Predictor.load(tmp_path / "shape.pt")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        Predictor.load(truncated)


def test_shipped_checkpoint_loads_and_forecasts() -> None:
    assert builtin_checkpoint_path().is_file()
    assert builtin_checkpoint_path().stat().st_size < 3_000_000
    p = Predictor.builtin()
    assert p.quantiles == QUANTILES and p.window_steps > 0 and p.horizon_steps > 0
    x = make_series(p.window_steps)[None]
    out = p.predict(x)
    assert out.shape == (1, p.horizon_steps, 4, 5)
    assert np.isfinite(out).all() and (np.diff(out, axis=-1) >= 0).all()
    # a steady CPU around 4 cores is forecast around 4 cores, not off by orders of magnitude
    med = out[0, 0, 0, QUANTILES.index(0.5)]
    assert 1.0 < med < 16.0


def test_calibrator_fixes_too_narrow_intervals() -> None:
    rng = np.random.default_rng(0)
    cal = ConformalCalibrator(window=200, gamma=0.01)
    z = np.array([-1.2816, 0.0, 1.2816, 1.6449, 2.3263])  # true N(10, 2) quantiles / 2
    narrow = 10.0 + np.tile(z * 0.5, (4, 1))  # model thinks sd = 0.5, truth is 2
    for _ in range(600):
        y = 10.0 + 2.0 * rng.standard_normal(4)
        cal.update(narrow, y, issued=cal.adjust(narrow))
    adj = cal.adjust(narrow)
    assert adj.shape == (4, 5) and (np.diff(adj, axis=-1) >= 0).all()
    np.testing.assert_allclose(adj[0, 2], 10.0 + 2.0 * 1.2816, atol=0.6)
    cov = cal.coverage()
    assert 0.84 < cov["cpu.q0.9"] < 0.95
    assert 0.7 < cov["cpu.interval80"] < 0.9


def test_level_windows_hold_twenty_expected_exceedances() -> None:
    from prae.model.calibration import level_windows

    assert level_windows((0.1, 0.5, 0.9, 0.95, 0.99), 200) == (200, 200, 200, 400, 2000)
    assert level_windows((0.5, 0.999), 50, min_exceedances=5) == (50, 5000)


def test_each_level_is_calibrated_from_its_own_window() -> None:
    """Windows (5, 5, 5, 7, 11): q0.9's offset is the largest of its last 5 scores and
    q0.99's of its last 11 (the conformal rank caps at the window's top), each shrunk by
    n / (n + 10). The normaliser is held to the forecast's width (2) so the scores are
    known numbers."""
    rng = np.random.default_rng(4)
    bank = CalibrationBank(1, window=5, windows=(5, 5, 5, 7, 11), error_half_life=None)
    pred = np.tile(np.array([9.0, 10.0, 11.0, 11.5, 12.0]), (1, 4, 1))  # (1, R, Q); d = 2
    idx = np.zeros(1, np.int64)
    ys = 10.0 + 2.0 * rng.standard_normal(30)
    for y in ys:
        bank.update(idx, pred, np.full((1, 4), y))
    adj = bank.adjust(idx, pred)[0, 0]
    s90 = (ys[-5:] - 11.0) / 2.0
    s99 = (ys[-11:] - 12.0) / 2.0
    assert adj[2] == pytest.approx(11.0 + 2.0 * s90.max() * 5 / 15)
    assert adj[4] == pytest.approx(12.0 + 2.0 * s99.max() * 11 / 21)
    assert s99.max() > s90.max()  # the seed makes the two windows' answers differ


def test_q99_remembers_a_burst_that_q90_has_forgotten() -> None:
    """q0.99 keeps 2000 scores, q0.9 200: 300 outcomes after a burst of misses, the
    burst still lifts q0.99 and no longer lifts q0.9 (with the forecast's width as the
    normaliser; with the recent error, see the next test)."""
    bank = CalibrationBank(1, window=200, error_half_life=None)
    assert bank.windows == (200, 200, 200, 400, 2000)
    pred = np.tile(np.array([9.0, 10.0, 11.0, 11.5, 12.0]), (1, 4, 1))  # (1, R, Q)
    idx = np.zeros(1, np.int64)
    for y in [30.0] * 50 + [10.0] * 300:
        bank.update(idx, pred, np.full((1, 4), y))
    adj = bank.adjust(idx, pred)[0, 0]
    assert adj[2] < 10.5  # q0.9: its last 200 scores are all y = 10 (brought down to ~10)
    assert adj[4] > 20.0  # q0.99: 50 of its 350 scores are the burst (y = 30)


def test_normaliser_is_the_recent_error_so_intervals_follow_turbulence() -> None:
    """Usage turbulent for 300 outcomes (sd 10 around the forecast's median), then calm
    (sd 2). The forecast itself never changes (q0.1..q0.9 = 9..11). Scaled by the recent
    error, q0.9 narrows within ~10 calm outcomes and keeps about its coverage there; scaled
    by the forecast's fixed width it stays wide while turbulent scores fill its window."""
    from prae.model.calibration import ERROR_HALF_LIFE, ERROR_MIN_OUTCOMES

    rng = np.random.default_rng(7)
    pred = np.tile(np.array([9.0, 10.0, 11.0, 11.5, 12.0]), (1, 4, 1))  # (1, R, Q)
    idx = np.zeros(1, np.int64)
    error, width = CalibrationBank(1), CalibrationBank(1, error_half_life=None)
    ys = np.r_[10.0 + 10.0 * rng.standard_normal(300), 10.0 + 2.0 * rng.standard_normal(100)]
    calm_hits = {"error": [], "width": []}
    spread = {}
    for t, y in enumerate(ys):
        for name, bank in (("error", error), ("width", width)):
            issued = bank.adjust(idx, pred)
            if t >= 310:  # ten calm outcomes in
                calm_hits[name].append(y <= issued[0, 0, 2])
                spread.setdefault(name, []).append(issued[0, 0, 2] - 10.0)
            bank.update(idx, pred, np.full((1, 4), y), issued=issued)
    # calm, the true q0.9 is 10 + 1.28 * 2 = 12.6 (here: 2.7 above the median, covering 93 %
    # of the calm outcomes); the width-scaled one is still 9.1 above, as if turbulent
    assert np.median(spread["error"]) < 3.5 < 7.0 < np.median(spread["width"])
    assert 0.85 < np.mean(calm_hits["error"]) < 0.98
    assert np.mean(calm_hits["width"]) > 0.99  # far too wide: every calm outcome is under it
    # the normaliser: the decayed mean of |y - q0.5| (half-life 3 outcomes), after 5 outcomes
    assert ERROR_HALF_LIFE == 3.0 and ERROR_MIN_OUTCOMES == 5
    fresh = CalibrationBank(1)
    for y in (14.0, 14.0, 14.0, 14.0, 11.0):
        fresh.update(idx, pred, np.full((1, 4), y))
    decay = 0.5 ** (1 / 3)
    weights = decay ** np.arange(5)
    expected = (weights * np.array([1.0, 4.0, 4.0, 4.0, 4.0])).sum() / weights.sum()
    np.testing.assert_allclose(fresh._width(idx, pred)[0], expected)
    assert CalibrationBank(1)._width(idx, pred)[0, 0] == 2.0  # no outcome yet: the width
    with pytest.raises(ValueError, match="error_half_life"):
        CalibrationBank(1, error_half_life=0.0)


def test_calibration_bank_matches_single_calibrators() -> None:
    rng = np.random.default_rng(1)
    bank = CalibrationBank(2)
    singles = [ConformalCalibrator(), ConformalCalibrator()]
    pred = np.sort(rng.random((50, 2, 4, 5)) * 10, axis=-1)
    act = rng.random((50, 2, 4)) * 10
    for t in range(50):
        bank.update(np.arange(2), pred[t], act[t])
        for i in range(2):
            singles[i].update(pred[t, i], act[t, i])
    for i in range(2):
        np.testing.assert_allclose(
            bank.adjust(np.array([i]), pred[0, i : i + 1])[0], singles[i].adjust(pred[0, i])
        )


def test_median_selector_picks_the_better_candidate_per_series() -> None:
    from prae.model.combination import MedianSelector

    sel = MedianSelector(2, 1, half_life=10, min_outcomes=20)
    # series 0: the last value is exact, the model 1.0 off; series 1: the other way round
    for _ in range(20):
        assert sel.choice(np.arange(2)).tolist() == [[0], [0]]  # too few outcomes: the model
        issued = np.array([[[6.0, 5.0]], [[3.0, 9.0]]])  # (S, R, K): model, last value
        sel.update(np.arange(2), issued, np.array([[5.0], [3.0]]))
    assert sel.choice(np.arange(2)).tolist() == [[1], [0]]
    np.testing.assert_allclose(sel.select(np.arange(2), issued), [[5.0], [3.0]])
    fresh = MedianSelector(1, 1)  # no outcome yet: the model; a NaN last value: the model
    np.testing.assert_allclose(fresh.select(np.zeros(1, int), np.array([[[2.0, 7.0]]])), [[2.0]])
    np.testing.assert_allclose(sel.select(np.zeros(1, int), np.array([[[2.0, np.nan]]])), [[2.0]])
    # a NaN outcome is skipped: nothing changes
    before = sel.err.copy()
    sel.update(np.arange(2), issued, np.full((2, 1), np.nan))
    np.testing.assert_array_equal(sel.err, before)
    with pytest.raises(ValueError, match="half_life"):
        MedianSelector(1, 1, half_life=0)


def test_a_carried_choice_is_used_from_the_first_forecast() -> None:
    """A run of a recurring workload starts from what its previous run learnt: the last
    value, exact there, is chosen before this run has any outcome of its own."""
    from prae.model.combination import MedianSelector

    before = MedianSelector(1, 1, half_life=10, min_outcomes=20)
    for _ in range(30):
        before.update(np.zeros(1, int), np.array([[[6.0, 5.0]]]), np.array([[5.0]]))
    record = before.record(0)
    fresh, carried = MedianSelector(1, 1, half_life=10), MedianSelector(1, 1, half_life=10)
    carried.restore(0, record)
    now = np.array([[[2.0, 7.0]]])  # model, last value
    assert fresh.select(np.zeros(1, int), now)[0, 0] == 2.0  # no outcome: the model
    assert carried.select(np.zeros(1, int), now)[0, 0] == 7.0
    record.err[0, 0] = 99.0  # a record is a copy: the selector it came from is untouched
    assert before.err[0, 0, 0] != 99.0
    with pytest.raises(ValueError, match="does not fit"):
        MedianSelector(1, 2).restore(0, record)


def test_shadow_change_worked_numbers() -> None:
    from prae.model.combination import SHADOW_CHANGE_BOUNDS, shadow_change

    last = np.full(6, 2.0)
    now = np.array([0.1, 0.0, 0.0, np.nan, 1.0, 0.1])
    ahead = np.array([0.3, 0.0, 1.0, 0.0, 100.0, np.nan])
    out = shadow_change(last, now, ahead)
    # x3; 0 stays 0 -> unchanged; 0 -> 1 says nothing of size; unknown; clipped at 5x; unknown
    np.testing.assert_allclose(out, [6.0, 2.0, np.nan, np.nan, 2.0 * SHADOW_CHANGE_BOUNDS[1], np.nan])


def test_median_selector_takes_the_shadow_candidate_only_where_it_wins() -> None:
    """Series 0: the shadow's change is exact, the model and the last value are not;
    series 1 has no shadow (NaN candidate): it scores as the model and never wins."""
    from prae.model.combination import CANDIDATES, MedianSelector

    sel = MedianSelector(2, 1, half_life=10, n_candidates=3, min_outcomes=5)
    for _ in range(10):
        issued = np.array([[[4.0, 3.0, 5.0]], [[2.0, 9.0, np.nan]]])  # model, last, shadow
        sel.update(np.arange(2), issued, np.array([[5.0], [2.0]]))
    assert sel.choice(np.arange(2)).tolist() == [[2], [0]]
    np.testing.assert_allclose(sel.select(np.arange(2), issued), [[5.0], [2.0]])
    with pytest.raises(ValueError, match="expected 3 candidates"):
        sel.update(np.arange(2), issued[..., :2], np.array([[5.0], [2.0]]))
    with pytest.raises(ValueError, match="n_candidates"):
        MedianSelector(1, 1, n_candidates=len(CANDIDATES) + 1)


def test_shadow_level_worked_numbers() -> None:
    """The shadow ahead in live units: a 5 % shadow that reads 1/20 of the bytes per unit
    of progress says the live run will read 20x what it reads at the target's progress."""
    from prae.model.combination import level_ratio, point_candidates

    live = np.array([[2.0, 1.0], [4.0, np.nan], [6.0, 3.0]])
    now = np.array([[0.1, 0.0], [0.2, 5.0], [np.nan, 0.0]])  # the shadow at each step's progress
    ratio = level_ratio(live, now)
    np.testing.assert_allclose(ratio, [20.0, np.nan])  # row 2 unknown for cpu; mem's shadow sums to 0
    cand = point_candidates(np.array([5.0, 5.0]), live[-1], now[-1], np.array([0.3, 1.0]), ratio)
    assert cand.shape == (2, 8)
    np.testing.assert_allclose(cand[:, 7], [6.0, np.nan])
    assert np.isnan(cand[:, 2:6]).all()  # no history candidates given
    assert point_candidates(np.array([5.0]), np.array([4.0])).shape == (1, 6)  # no shadow


def test_centre_on_moves_every_level_by_the_medians_change() -> None:
    """The model's quantiles are moved onto the chosen median, their spread kept; a NaN
    median keeps them; below 0 is left to the calibration (which clips)."""
    from prae.model.combination import centre_on

    q = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]] * 4)
    out = centre_on(q, np.array([2.5, 9.0, 0.2, np.nan]))
    np.testing.assert_allclose(
        out,
        [[1.5, 2.5, 3.5, 4.5, 5.5], [8.0, 9.0, 10.0, 11.0, 12.0], [-0.8, 0.2, 1.2, 2.2, 3.2], [1.0, 2.0, 3.0, 4.0, 5.0]],
    )


def test_dominant_period_finds_a_bursty_cycle_and_nothing_in_a_flat_or_gappy_window() -> None:
    """A VM that bursts for 8 steps every 17 (held-out Bitbrains VM 235 does, at ~17.5),
    with noise: the autocorrelation's best lag beyond the lead is the cycle."""
    from prae.model.seasonal import dominant_periods

    rng = np.random.default_rng(0)
    t = np.arange(1152)
    burst = np.where(t % 17 < 8, 4.0, 0.5) + rng.normal(0, 0.3, t.size)
    flat = np.full(t.size, 2.0)
    gappy = burst.copy()
    gappy[rng.random(t.size) < 0.3] = np.nan  # 30 % missing: more than MAX_MISSING
    assert dominant_periods(np.stack([burst, flat, gappy]), min_lag=4).tolist() == [17, 0, 0]
    # a short window cannot show a long period: the lags stop at half the window
    assert dominant_periods(burst[:30], min_lag=16) == 0


def test_seasonal_candidates_are_causal_and_the_engine_gets_the_backtests_rows() -> None:
    """``seasonal_track`` (the backtest, all rows at once) and ``SeasonalNow`` (the engine,
    a row at a time from a bounded buffer) give the same candidates row for row, and
    changing the data after row t changes no candidate issued at or before t."""
    from prae.model.seasonal import (
        PERIODIC_HISTORY,
        SEASONAL,
        SeasonalNow,
        calendar_periods,
        seasonal_track,
    )

    assert calendar_periods(300.0, 3) == {"daily": 288, "weekly": 2016}
    assert calendar_periods(7.0, 3) == {"weekly": 86400}  # a day is not a whole number of 7-s steps
    rng = np.random.default_rng(1)
    t, lead = 2400, 3
    rows = np.arange(t)
    y = np.stack(
        [
            np.where(rows % 17 < 8, 4.0, 0.5) + rng.normal(0, 0.1, t),  # a 17-step cycle
            1.0 + 0.5 * np.sin(2 * np.pi * rows / 288) + rng.normal(0, 0.05, t),  # daily
            rng.lognormal(0, 1, t),
            np.full(t, 3.0),
        ],
        axis=1,
    )
    y[500:540, 2] = np.nan
    track = seasonal_track(y, lead, 300.0)
    assert track.shape == (t, 4, len(SEASONAL))
    assert np.isnan(track[: PERIODIC_HISTORY, :, 0]).all()  # no period before a window
    # the cycle's candidate: the bursts' level at the target's place in the cycle
    late = np.arange(PERIODIC_HISTORY + 12, t)
    expected = np.where((late + lead) % 17 < 8, 4.0, 0.5)
    np.testing.assert_allclose(track[late, 0, 0], expected, atol=0.35)
    np.testing.assert_allclose(track[600:, 1, 1], y[600 + lead - 288 : t + lead - 288, 1], atol=0.2)
    # a week back (2016 steps) is known from row 2016 - lead on, the repeats that are known
    assert np.isnan(track[: 2016 - lead, :, 2]).all()
    np.testing.assert_array_equal(track[2016 - lead :, 0, 2], y[: t - 2016 + lead, 0])

    now = SeasonalNow(4)
    buffer = 1300  # the engine keeps the newest rows only: enough for a period and 3 days
    for i in range(t):
        got = now(y[max(0, i + 1 - buffer) : i + 1], i + 1, lead, 300.0)
        np.testing.assert_array_equal(got[:, :2], track[i, :, :2], err_msg=f"row {i}")
        assert np.isnan(got[:, 2]).all()  # a week back is beyond the buffer

    y2 = y.copy()
    y2[1700:] *= 5.0
    track2 = seasonal_track(y2, lead, 300.0)
    np.testing.assert_array_equal(track[:1700], track2[:1700])
    assert not np.allclose(track[1800:, 0, 0], track2[1800:, 0, 0])


def test_analog_candidate_follows_the_series_own_burst_shape() -> None:
    """Bursts at irregular times, each the same shape (a jump to 5, then 6 steps at 4,
    then back to 1): a step after a jump the analog knows the burst is still on 3 steps
    later, and 4 steps after it that it will be over -- the last value is wrong at the
    second, and 3 steps before a jump (no sign of it yet) both say 1. Ties
    (a flat series) take the newest moments; a NaN is never compared."""
    from prae.model.analogs import ANALOG_NEIGHBOURS, ANALOG_PATTERN, analog_track

    rng = np.random.default_rng(2)
    shape = np.array([5.0, 4, 4, 4, 4, 4, 4])
    x, starts = [], []
    while len(x) < 3000:
        x += [1.0] * int(rng.integers(15, 60))
        starts.append(len(x))
        x += shape.tolist()
    y = np.array(x)[:, None] + rng.normal(0, 0.02, (len(x), 1))
    lead = 3
    track = analog_track(y, lead).median[:, 0]
    late = [s for s in starts if s > 1500 and s + 10 < len(y)]
    np.testing.assert_allclose(track[[s + 1 for s in late]], 4.0, atol=0.1)  # target s + 4: on
    np.testing.assert_allclose(track[[s + 4 for s in late]], 1.0, atol=0.1)  # target s + 7: off
    np.testing.assert_allclose(y[[s + 4 for s in late], 0], 4.0, atol=0.1)  # the last value: on
    np.testing.assert_allclose(track[[s - 3 for s in late]], 1.0, atol=0.1)
    # none before ANALOG_NEIGHBOURS moments with known outcomes exist
    first = np.flatnonzero(~np.isnan(track))[0]
    assert first == lead + ANALOG_PATTERN + ANALOG_NEIGHBOURS - 2
    # a flat series ties everywhere: the newest outcomes, i.e. the flat value
    flat = analog_track(np.full((200, 1), 3.0), lead).median[:, 0]
    assert np.isnan(flat[:first]).all() and (flat[first:] == 3.0).all()
    # a missing value: rows whose own pattern holds it get none; the rest go on
    gap = y.copy()
    gap[2000, 0] = np.nan
    track_gap = analog_track(gap, lead).median[:, 0]
    assert np.isnan(track_gap[2000 : 2000 + ANALOG_PATTERN]).all()
    assert not np.isnan(track_gap[2000 + ANALOG_PATTERN :]).any()


def test_analog_candidate_is_causal_and_the_engine_gets_the_backtests_rows() -> None:
    """``analog_track`` (the backtest, all rows at once) and ``analog_now`` (the engine, the
    newest row of a bounded buffer) agree bit for bit, the median and the quantiles, and
    data after row t changes nothing issued at or before t. ``history_track`` /
    ``HistoryNow`` put the seasonal ones and the analog side by side."""
    from prae.model.analogs import analog_now, analog_reach, analog_track
    from prae.model.history import HISTORY, HistoryNow, history_track

    rng = np.random.default_rng(3)
    t, lead = 2600, 3
    y = rng.lognormal(0, 1, (t, 4))
    y[700:705, 1] = np.nan
    track = analog_track(y, lead)
    assert track.median.shape == (t, 4) and track.quantiles.shape == (t, 4, len(QUANTILES))
    buffer = analog_reach(lead)  # the engine keeps at least this many rows
    for i in list(range(80)) + list(range(690, 730)) + list(range(2000, 2100)) + [t - 1]:
        got = analog_now(y[max(0, i + 1 - buffer) : i + 1], lead)
        np.testing.assert_array_equal(got.median, track.median[i], err_msg=f"row {i}")
        np.testing.assert_array_equal(got.quantiles, track.quantiles[i], err_msg=f"row {i}")
    y2 = y.copy()
    y2[1700:] *= 5.0
    track2 = analog_track(y2, lead)
    for a, b in zip(track2, track, strict=True):
        np.testing.assert_array_equal(a[:1700], b[:1700])
        assert not np.allclose(a[1800:], b[1800:])

    hist = history_track(y[:400], lead, 300.0)
    assert hist.candidates.shape == (400, 4, len(HISTORY)) and HISTORY[-1] == "analog"
    np.testing.assert_array_equal(hist.candidates[..., -1], track.median[:400])
    np.testing.assert_array_equal(hist.analog_quantiles, track.quantiles[:400])
    now = HistoryNow(4)
    for i in range(400):
        got = now(y[: i + 1], i + 1, lead, 300.0)
        np.testing.assert_array_equal(got.candidates, hist.candidates[i], err_msg=f"row {i}")
        np.testing.assert_array_equal(got.analog_quantiles, hist.analog_quantiles[i], err_msg=f"row {i}")
    # without the analog (predictor.analog_candidate: false): its column and quantiles NaN,
    # the rest as they were
    off = history_track(y[:400], lead, 300.0, analog=False)
    assert np.isnan(off.candidates[..., -1]).all() and np.isnan(off.analog_quantiles).all()
    np.testing.assert_array_equal(off.candidates[..., :-1], hist.candidates[..., :-1])
    off_now = HistoryNow(4, analog=False)(y[:400], 400, lead, 300.0)
    assert np.isnan(off_now.candidates[:, -1]).all() and np.isnan(off_now.analog_quantiles).all()


def test_analog_quantiles_are_the_outcomes_of_the_nearest_moments() -> None:
    """A series whose next value depends on where it is in a 6-step cycle, plus noise: the
    analog quantiles of a row are the mean of the ``QUANTILES`` of the outcomes of its
    ``ANALOG_CLOSE`` and of its ``ANALOG_SPREAD`` nearest moments, which here are the
    moments at the same phase, so they match the spread of that phase's outcomes and no
    other. None before ``ANALOG_SPREAD`` moments with known outcomes exist."""
    from prae.model.analogs import ANALOG_CLOSE, ANALOG_PATTERN, ANALOG_SPREAD, analog_track

    rng = np.random.default_rng(5)
    cycle = np.array([1.0, 1.0, 2.0, 8.0, 3.0, 1.0])
    t, lead = 1500, 2
    phase = np.arange(t) % 6
    y = (cycle[phase] * rng.lognormal(0, 0.1, t))[:, None]
    found = analog_track(y, lead)
    first = np.flatnonzero(~np.isnan(found.quantiles[:, 0, 0]))[0]
    assert first == lead + ANALOG_PATTERN + ANALOG_SPREAD - 2
    for row in (1200, 1201, 1203, 1499):
        q = found.quantiles[row, 0]
        # brute force: the same distance (sum of absolute differences over the pattern)
        pat = y[row - ANALOG_PATTERN + 1 : row + 1, 0]
        moments = np.arange(max(ANALOG_PATTERN - 1, row - lead - 2016), row - lead + 1)
        dist = np.array([np.abs(y[m - ANALOG_PATTERN + 1 : m + 1, 0] - pat).sum() for m in moments])
        order = np.lexsort((-moments, dist))  # nearest first, ties newest first
        outcome = y[moments[order] + lead, 0]
        close, wide = outcome[:ANALOG_CLOSE], outcome[:ANALOG_SPREAD]
        want = (np.quantile(close, QUANTILES) + np.quantile(wide, QUANTILES)) / 2
        np.testing.assert_allclose(q, want, rtol=1e-12)
        # the nearest moments are at the target's phase: its level, not the other phases'
        target_level = cycle[(row + lead) % 6]
        assert target_level * 0.7 < q[0] <= q[-1] < target_level * 1.4
        assert (np.diff(q) >= 0).all()


def test_blend_analog_averages_levels_on_the_chosen_median() -> None:
    """The worked number of the docstring; a row without analog quantiles keeps the
    model's; the median stays exactly the chosen one; weight 0 is the model's, 1 the
    analog's moved onto the median; a weight outside [0, 1] names the rule."""
    from prae.model.combination import blend_analog

    levels = (0.1, 0.5, 0.9)
    model = np.array([[8.0, 10.0, 12.0], [1.0, 2.0, 3.0]])
    analog = np.array([[5.0, 6.0, 14.0], [np.nan, np.nan, np.nan]])
    out = blend_analog(model, analog, 0.75, levels)
    np.testing.assert_allclose(out[0], [8.75, 10.0, 16.5])
    np.testing.assert_array_equal(out[1], model[1])
    np.testing.assert_array_equal(blend_analog(model, analog, 0.0, levels), model)
    np.testing.assert_allclose(blend_analog(model, analog, 1.0, levels)[0], [9.0, 10.0, 18.0])
    # rounding never moves the median off the chosen one, nor a level across it
    med = 0.1 + 0.2
    out = blend_analog(np.array([med, med, med]), np.array([0.3, 0.7, 0.9]), 0.7, levels)
    assert out[1] == med and out[0] <= med <= out[2]
    with pytest.raises(ValueError, match=r"analog weight must be in \[0, 1\]"):
        blend_analog(model, analog, 1.5, levels)


def test_median_selector_weighs_candidates_by_their_relative_error() -> None:
    """Worked numbers of the soft minimum: errors 1.0 and 1.05 -> weights 1 : e**-1 at
    sharpness 20; a candidate unknown now has no weight; None: the best alone."""
    from prae.model.combination import MedianSelector

    sel = MedianSelector(1, 1, half_life=10, n_candidates=3, min_outcomes=1, sharpness=20.0)
    sel.update(np.zeros(1, int), np.array([[[1.0, 3.05, 7.0]]]), np.array([[2.0]]))  # errors 1, 1.05, 5
    w = sel.mix_weights(np.zeros(1, int))[0, 0]
    np.testing.assert_allclose(w[:2] / w[0], [1.0, np.exp(-1.0)])
    assert w[2] < 1e-30
    now = np.array([[[10.0, 20.0, 30.0]]])
    np.testing.assert_allclose(sel.select(np.zeros(1, int), now), [[(10 + 20 * np.exp(-1)) / (1 + np.exp(-1))]])
    np.testing.assert_allclose(sel.select(np.zeros(1, int), np.array([[[10.0, np.nan, 30.0]]])), [[10.0]])
    hard = MedianSelector(1, 1, n_candidates=3, min_outcomes=1, sharpness=None)
    hard.update(np.zeros(1, int), np.array([[[1.0, 3.05, 7.0]]]), np.array([[2.0]]))
    np.testing.assert_allclose(hard.select(np.zeros(1, int), now), [[10.0]])
    with pytest.raises(ValueError, match="sharpness"):
        MedianSelector(1, 1, sharpness=0.0)
