"""The per-workload tail choice: the model's calibrated tail, the last value plus the
workload's own recent changes, and its own recent values, weighted by their recent losses
(prae.model.tails), in the backtest and the live tracker."""

from __future__ import annotations

import numpy as np
import pytest

from prae.model.tails import IncrementQuantiles, TailChoice, TailSelector, tail_anchor
from prae.resources import QUANTILES, RESOURCES

R = len(RESOURCES)
DISK, CPU, MEM = RESOURCES.index("disk"), RESOURCES.index("cpu"), RESOURCES.index("mem")
UPPER = np.array(QUANTILES) >= 0.9


def test_the_anchor_is_the_hours_peak_for_cpu_and_the_last_value_otherwise():
    last = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    peak = np.array([[5.0, 6.0, 7.0, 8.0], [np.nan] * 4])
    got = tail_anchor(last, peak)
    assert got[0, CPU] == 5.0 and got[1, CPU] == 1.0  # an unknown peak: the last value
    assert (np.delete(got, CPU, axis=1) == np.delete(last, CPU, axis=1)).all()


def test_increment_quantiles_are_the_last_value_plus_the_quantiles_of_recent_changes():
    iq = IncrementQuantiles(2, resources=("disk", "net"), window=50, min_count=5)
    idx = np.array([0])
    changes = np.r_[np.zeros(45), np.full(5, 38.0)]
    for k, c in enumerate(changes):
        last = np.full((1, R), 2.0)
        assert np.isnan(iq.forecast(idx, last)[0, DISK]).all() == (k < 5)  # too few changes known
        iq.update(idx, last, last + c)
    got = iq.forecast(idx, np.full((1, R), 2.0))[0]
    np.testing.assert_allclose(got[DISK], 2.0 + np.quantile(changes, QUANTILES), rtol=1e-6)
    assert np.isnan(got[CPU]).all()  # cpu is not among its resources: its changes are not kept
    assert np.isnan(iq.forecast(np.array([1]), np.ones((1, R)))).all()  # the other series
    # the window forgets: 50 more changes of -1 replace every earlier one; values stay >= 0
    for _ in range(50):
        iq.update(idx, np.full((1, R), 0.5), np.full((1, R), -0.5))
    np.testing.assert_allclose(iq.forecast(idx, np.full((1, R), 0.5))[0, DISK], 0.0)
    # a missing actual is skipped, not counted
    before = iq.count.copy()
    iq.update(idx, np.ones((1, R)), np.full((1, R), np.nan))
    assert (iq.count == before).all()
    with pytest.raises(ValueError, match="min_count"):
        IncrementQuantiles(1, window=10, min_count=11)
    with pytest.raises(ValueError, match="unknown tail resource"):
        IncrementQuantiles(1, ("disk", "gpu"))


def test_tail_selector_weighs_the_tighter_calibrated_tails_only_for_its_resources():
    """A disk idling at 1 with a burst to 9 every 20 steps: the model's tail above 0.9 is 30
    (far too loose), the increments' and the values' tails know the bursts. After 20
    outcomes disk's upper levels are those two tails' weighted mean (the model's weight is
    ~0), net (a hard-choice resource) takes the better one alone, memory (left out of this
    selector's resources) keeps the model's, and q0.1 and the median never change."""
    sel = TailSelector(1, R, half_life=100.0, resources=("cpu", "disk", "net"), hard=("net",))
    idx = np.zeros(1, np.int64)
    model = np.tile(np.array([0.5, 1.0, 30.0, 40.0, 50.0]), (1, R, 1))
    rng = np.random.default_rng(0)
    for t in range(40):
        y = np.full((1, R), 9.0 if t % 20 == 19 else 1.0)
        inc = np.tile(np.array([1.0, 1.0, 1.0, 9.0, 9.0]) + rng.normal(0, 0.01, 5), (1, R, 1))
        values = np.tile(np.array([1.0, 1.0, 1.0, 5.0, 9.0]), (1, R, 1))
        cand = np.stack([model, np.sort(inc, axis=-1), values], axis=-2)  # (1, R, 3, Q)
        out = sel.select(idx, cand)[0]
        if t < 20:  # the model stands until MIN_OUTCOMES
            np.testing.assert_array_equal(out, model[0])
        sel.update(idx, cand, y)
    out = sel.select(idx, cand)[0]
    w = sel.mix_weights(idx)[0]
    assert w[DISK, 0] < 1e-9 and w[DISK, 1:].min() > 0.01  # both own tails count
    np.testing.assert_allclose(out[DISK, UPPER], (w[DISK, 1:, None] * cand[0, DISK, 1:, UPPER.nonzero()[0]].T).sum(0), rtol=1e-9)
    net = RESOURCES.index("net")
    np.testing.assert_array_equal(out[net, UPPER], np.maximum.accumulate(cand[0, net, sel.choice(idx)[0, net]])[UPPER])
    assert sel.choice(idx)[0, net] in (1, 2) and sel.choice(idx)[0, MEM] == 0
    np.testing.assert_array_equal(out[DISK, ~UPPER], model[0, DISK, ~UPPER])
    np.testing.assert_array_equal(out[MEM], model[0, MEM])
    assert (np.diff(out, axis=-1) >= 0).all()
    # an unknown tail (NaN) is never used, and scores as the model's
    cand[..., 1:, :] = np.nan
    np.testing.assert_array_equal(sel.select(idx, cand)[0], model[0])
    with pytest.raises(ValueError, match="unknown tail resource"):
        TailSelector(1, R, resources=("gpu",))


def test_tail_weights_follow_the_losses_and_agreeing_tails_give_their_value_exactly():
    """Two own tails whose losses differ by 5 %: weights 1 : exp(-20 * 0.05) (the median's
    rule). Where the candidates issue the same value (a pinned workload: 0.7 at every level),
    the tail is 0.7 exactly -- a weighted sum rounded under it would make a tie a miss."""
    sel = TailSelector(1, R, half_life=1e9, resources=("cpu",), hard=())
    idx = np.zeros(1, np.int64)
    sel.err[0, CPU] = [10.0, 1.0, 1.05]
    sel.weight[0, CPU] = 1.0
    sel.count[0, CPU] = 100
    w = sel.mix_weights(idx)[0, CPU]
    np.testing.assert_allclose(w, np.array([0.0, 1.0, np.exp(-1.0)]) / (1 + np.exp(-1.0)), atol=1e-12)
    pinned = np.full((1, R, 3, len(QUANTILES)), 0.7)
    assert (sel.select(idx, pinned)[0, CPU] == 0.7).all()


def test_the_values_tail_is_the_quantiles_of_recent_values_and_wins_where_memory_jumps_at_random():
    """A memory that takes a random one of 40 and 150 at every step: the last value plus
    its changes reaches 150 + 110 after a high step, the recent values' tail is 150 at
    most. Fed through ``TailChoice`` the values' tail has the smaller loss, so it carries
    memory's upper levels."""
    rng = np.random.default_rng(1)
    choice = TailChoice(1, resources=("mem",), window=200)
    idx = np.zeros(1, np.int64)
    model = np.tile(np.array([30.0, 95.0, 300.0, 350.0, 400.0]), (1, R, 1))
    y = rng.choice([40.0, 150.0], size=400)
    pending = []
    for t in range(400):
        if t >= 3:
            tails, anchor = pending[t - 3]
            choice.learn(idx, tails, anchor, np.full((1, R), y[t]))
        anchor = np.full((1, R), y[t])
        out, tails = choice.issue(idx, model, anchor)
        pending.append((tails, anchor))
    np.testing.assert_allclose(tails[0, MEM, 2], np.quantile(y[200:], QUANTILES))  # the last 200 targets
    assert choice.selector.choice(idx)[0, MEM] == 2
    assert out[0, MEM, UPPER].max() <= 150.0 + 1e-9


def test_the_backtest_chooses_tails_causally_and_only_for_its_resources():
    """``choose_tail`` on a disk that idles at 1 with a burst every 10 steps, forecast with a
    loose tail (q0.9.. = 20, 30, 40): after warm-up its tails are the increments' (much
    tighter); a CPU that swings between 3 and 1 cores takes its tail from the hour's peak
    (3, never 3 + 2); a flat memory takes its last value (a change of 0), but not when the
    config leaves memory out; and a forecast issued at t does not change when values after
    t change."""
    from prae.backtest.runner import BacktestConfig, Grid, choose_tail

    t_n, lead = 400, 3
    y = np.ones((1, t_n, R))
    y[0, 9::10, DISK] = 6.0
    y[0, ::2, CPU] = 3.0
    cal = np.tile(np.array([0.5, 1.0, 20.0, 30.0, 40.0]), (1, t_n, R, 1))
    cal[0, t_n - lead :] = np.nan  # no target inside the series
    grid = Grid(("vm",), 300.0, np.zeros(1), np.zeros(1, np.int64), np.array([t_n]), y, np.ones((1, R), bool))
    out = choose_tail(grid, cal, BacktestConfig(), lead)
    late = slice(200, t_n - lead)
    top = out[0, late, DISK][:, UPPER].max(axis=-1)  # was 40: now the last value + a burst's +5
    assert (top <= np.where(y[0, late, DISK] > 1.0, 11.0, 6.0)).all()
    np.testing.assert_allclose(out[0, late, CPU][:, UPPER], 3.0)
    np.testing.assert_array_equal(out[0, late, MEM][:, UPPER], 1.0)  # default: memory is a tail resource
    without_mem = choose_tail(grid, cal, BacktestConfig(tail_resources=("cpu", "disk", "net")), lead)
    np.testing.assert_array_equal(without_mem[0, :, MEM], cal[0, :, MEM])
    np.testing.assert_array_equal(without_mem[0, :, DISK], out[0, :, DISK])
    np.testing.assert_array_equal(out[0, late, DISK][:, ~UPPER], cal[0, late, DISK][:, ~UPPER])
    future = y.copy()
    future[0, 300:, DISK] = 50.0
    again = choose_tail(Grid(("vm",), 300.0, grid.starts, grid.offsets, grid.lengths, future, grid.has_resource), cal, BacktestConfig(), lead)
    np.testing.assert_array_equal(again[0, :300], out[0, :300])
    assert not np.array_equal(again[0, 300:], out[0, 300:])


def test_a_pinned_series_tail_that_equals_its_value_is_not_a_miss():
    """A disk pinned at 0.7 (float32 rounds it down, to 0.69999999): the increments' tail is
    0.7 + a change of 0 and the calibration's is 0.7 too -- a tie with the actual, which
    covers it. Kept in float64 from the calibration on, no issued level is below 0.7;
    in float32 every one of them was."""
    from prae.backtest.runner import BacktestConfig, Grid, calibrate, choose_tail

    t_n, lead = 400, 3
    y = np.full((1, t_n, R), 0.7)
    raw = np.tile(np.array([0.5, 0.7, 20.0, 30.0, 40.0], np.float32), (1, t_n, R, 1))
    raw[0, t_n - lead :] = np.nan
    grid = Grid(("vm",), 300.0, np.zeros(1), np.zeros(1, np.int64), np.array([t_n]), y, np.ones((1, R), bool))
    cfg = BacktestConfig()
    out = choose_tail(grid, calibrate(grid, raw, cfg, lead), cfg, lead)
    late = slice(250, t_n - lead)
    issued, actual = out[0, late, DISK][:, UPPER], y[0, late, DISK, None]  # float64 both
    assert (issued >= actual).all(), issued.min()
