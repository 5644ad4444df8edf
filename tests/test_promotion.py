"""Champion/challenger: the rule, the time split it judges on, and the backtest's daily
retraining using it (no Ray; the live engine's Ray Train path is in test_engine_ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prae.backtest.runner import BacktestConfig, run_backtest
from prae.model import ModelConfig, Predictor
from prae.model.promotion import PromotionRule, compare, judge
from prae.model.training import split_newest, windows_from_series
from prae.traces.series import Series

TINY = ModelConfig(window_steps=16, horizon_steps=4, hidden_size=16)


def test_judge_promotes_only_a_significantly_lower_loss_on_enough_windows() -> None:
    rng = np.random.default_rng(0)
    champion = rng.gamma(2.0, 0.5, 400)  # per-window losses, mean ~1
    noise = rng.normal(0, 0.05, 400)
    rule = PromotionRule(min_windows=10)

    better = compare(champion, champion * 0.9 + noise)  # 10 % lower, se ~0.005
    assert better.windows == 400 and better.challenger_loss < better.champion_loss
    assert 0 < better.gain_se < 0.01
    assert judge(better, rule).promote
    same = compare(champion, champion + noise)  # equal but for noise
    assert not judge(same, rule).promote
    assert judge(same, PromotionRule(min_windows=10, significance_z=0.0)).promote == (same.challenger_loss < same.champion_loss)
    assert not judge(compare(champion, champion * 1.1), rule).promote
    few = compare(champion[:9], champion[:9] * 0.5)
    v = judge(few, rule)
    assert not v.promote and "fewer than 10" in v.reason
    gain = PromotionRule(min_windows=10, min_gain=0.15)  # 10 % is significant but too small
    assert not judge(better, gain).promote
    assert judge(compare(champion, champion * 2), PromotionRule(always=True)).promote
    # NaN windows are left out of both; a tie everywhere is no gain
    a = np.array([1.0, np.nan, 2.0, 3.0])
    c = compare(a, np.array([1.0, 0.0, np.nan, 3.0]))
    assert (c.windows, c.champion_loss, c.gain_se) == (2, 2.0, 0.0)
    assert not judge(c, PromotionRule(min_windows=1)).promote
    d = judge(better, rule).as_dict()
    assert d["promote"] is True and d["holdout_windows"] == 400 and d["gain_se"] == better.gain_se
    with pytest.raises(ValueError):
        compare(np.zeros(3), np.zeros(4))


def test_holdout_rows_are_a_share_capped_and_none_when_always() -> None:
    rule = PromotionRule(holdout_share=0.2, max_holdout_rows=288)
    assert rule.holdout_rows(100) == 20
    assert rule.holdout_rows(8640) == 288
    assert PromotionRule(always=True).holdout_rows(8640) == 0
    for bad in ({"holdout_share": 0.0}, {"holdout_share": 1.0}, {"min_gain": 1.0}, {"min_windows": 0}, {"significance_z": -1.0}):
        with pytest.raises(ValueError):
            PromotionRule(**bad)


@pytest.mark.parametrize("hold", [0, 3, 4, 20, 200])
def test_split_newest_holds_out_the_newest_targets_and_trains_on_the_rest(hold: int) -> None:
    w, h, n = 16, 4, 200
    live = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    live[50:53] = np.nan  # a gap: windows with no target observation are dropped as usual
    train, held = split_newest(live, None, w, h, hold)
    cut = n - hold
    # training: every window of the rows before the cut, and only those
    before = windows_from_series(live[:cut], None, w, h)
    assert np.array_equal(train.starts, before.starts)
    assert np.all(train.starts + w + h <= cut)
    # holdout: one window per held-out row, whose first target is that row, targets past
    # the end missing (so even 3 rows, fewer than the horizon, are judged)
    expected = np.arange(max(cut - w, 0), n - w) if hold else np.arange(0)
    assert np.array_equal(held.starts, expected)
    if hold:
        _, _, y = held.batch(np.arange(len(held)))
        assert np.array_equal(y[:, 0, 0], live[held.starts + w, 0], equal_nan=True)  # held-out rows
        assert np.isnan(y[-1, 1:]).all()  # the newest row's later targets do not exist
        assert np.nanmin(y[..., 0]) >= 2 * cut
    if len(train):
        _, _, yt = train.batch(np.arange(len(train)))
        assert np.nanmax(yt[..., 0]) < 2 * cut  # no training target is a held-out row
    else:
        assert hold == n  # everything held out: nothing to train on


def make_series(n_series: int = 3, days: float = 3.0, seed: int = 0) -> list[Series]:
    rng = np.random.default_rng(seed)
    n = int(days * 288)
    out = []
    for s in range(n_series):
        t = np.arange(n)
        level = (1 + s) * (1 + 0.5 * np.sin(2 * np.pi * t / 288)) * rng.lognormal(0, 0.2, n)
        vals = np.stack([level, 1e9 * (1 + 0.1 * rng.random(n)), rng.exponential(1e6, n), rng.exponential(1e5, n)], 1)
        out.append(Series(f"s{s}", 1_700_000_000.0, 300.0, vals.astype(np.float64), "test"))
    return out


def test_backtest_keeps_the_champion_when_retraining_makes_it_worse() -> None:
    """A learning rate that wrecks the model: judged, every challenger loses and the
    forecasts are exactly those of no retraining; with ``always`` they change."""
    series = make_series()
    predictor = Predictor.create(TINY, seed=0)
    base = dict(retrain_every_s=86400.0, retrain_windows=256, retrain_lr=5.0, seed=3)
    gated = run_backtest(series, predictor, BacktestConfig(**base))
    never = run_backtest(series, predictor, BacktestConfig(**{**base, "retrain_every_s": None}))
    always = run_backtest(series, predictor, BacktestConfig(**base, promotion=PromotionRule(always=True)))

    assert len(gated.train_log) == 2  # days 2 and 3
    for log in gated.train_log:
        assert log["promote"] is False, log
        assert log["challenger_loss"] > log["champion_loss"] > 0 and log["holdout_windows"] >= 16
    assert {v for _, v in gated.versions} == {predictor.version}
    np.testing.assert_array_equal(gated.raw, never.raw)
    assert all(log["promote"] and log["reason"] == "always" for log in always.train_log)
    assert len({v for _, v in always.versions}) == 3
    assert not np.allclose(np.nan_to_num(always.raw), np.nan_to_num(gated.raw))


def test_backtest_promotes_a_challenger_that_forecasts_the_held_out_rows_better() -> None:
    """An untrained model learns the series in one retraining: promoted, and the verdict
    says why."""
    series = make_series()
    predictor = Predictor.create(TINY, seed=0)
    result = run_backtest(series, predictor, BacktestConfig(retrain_every_s=86400.0, retrain_windows=512, retrain_lr=3e-3))
    first = result.train_log[0]
    assert first["promote"] is True and first["reason"].startswith("gain "), first
    assert first["champion_loss"] - first["challenger_loss"] > 2 * first["gain_se"] > 0, first
    assert result.versions[1][1] != predictor.version
    for log in result.train_log:
        assert log["promote"] == (log["champion_loss"] - log["challenger_loss"] > 2 * log["gain_se"]), log


def test_retraining_holds_out_each_workloads_newest_rows_of_the_store(tmp_path) -> None:
    """What the live engine's retraining trains and judges on (``windows_from_store``)."""
    from prae.store.feedback import FeedbackStore
    from train.store_data import windows_from_store

    store = FeedbackStore(tmp_path)
    lengths = {"a": 100, "b": 60}
    for wl, n in lengths.items():
        rows = [
            {"ts": 1000.0 + i, "role": "live", "cpu": float(i), "mem": 1e8, "disk": 1.0, "net": 1.0, "progress": i / n}
            for i in range(n)
        ]
        rows += [
            {"ts": 1000.0 + i / 10, "role": "shadow", "cpu": 0.1, "mem": 1e7, "disk": 1.0, "net": 1.0, "progress": i / n}
            for i in range(n)
        ]
        store.append("telemetry", wl, rows)
    store.flush()
    rule = PromotionRule(holdout_share=0.2)
    w, h = 16, 4
    data = windows_from_store(store, w, h, 5, rule.holdout_rows)
    assert data.rows == 160 and data.train is not None and data.holdout is not None
    assert data.train.shadow is not None  # the aligned shadow channel travels with both
    _, _, y_train = data.train.batch(np.arange(len(data.train)))
    _, _, y_held = data.holdout.batch(np.arange(len(data.holdout)))
    # cpu counts the workload's rows: held-out targets are its newest 20 % (a: >= 80, b: >= 48)
    held_cpu = y_held[..., 0]
    assert set(np.unique(held_cpu[held_cpu >= 80]).astype(int)) == set(range(80, 100))
    assert np.nanmin(held_cpu) == 48 and set(np.unique(held_cpu[held_cpu < 60]).astype(int)) == set(range(48, 60))
    assert len(data.holdout) == 20 + 12  # one window per held-out row
    # no training target is a held-out row of its workload: a's rows 80+ and b's 48+ never
    # appear (b's values only go to 59, so any training value >= 48 must be a's, below 80)
    tr = y_train[..., 0]
    assert np.nanmax(tr) < 80
    assert len(data.train) == (80 + w - 1 - w - h + 1) + (48 + w - 1 - w - h + 1)
    none = windows_from_store(store, w, h, 5)  # no holdout: every window trains
    assert none.holdout is None and len(none.train) == len(data.train) + len(data.holdout)


def test_the_run_summary_gives_each_verdicts_losses_or_why_there_were_none() -> None:
    from prae.engine.summary import RunSummary, format_table

    rule = PromotionRule()
    rng = np.random.default_rng(0)
    champion = 1.0 + rng.random(40)
    judged = judge(compare(champion, champion - 0.5), rule)
    empty = judge(compare(np.zeros(0), np.zeros(0)), rule)
    results = [{"promote": v.promote, "verdict": v.as_dict()} for v in (judged, empty)]
    text = format_table(RunSummary((), 1, ("a",), 1, {"retrain_results": results}))
    line = next(x for x in text.splitlines() if x.startswith("retrained models promoted"))
    assert f"yes: {judged.challenger_loss:.3f} vs {judged.champion_loss:.3f} held out" in line
    assert f"no: {empty.reason}" in line and "nan" not in line
    # and summary.json stays JSON: the empty verdict's NaN losses are null, not a bare NaN
    summary = RunSummary((), 1, ("a",), 1, {"retrain_results": results})
    back = json.loads(summary.to_json(), parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    verdict = back["extra"]["retrain_results"][1]["verdict"]
    assert verdict["champion_loss"] is None and verdict["holdout_windows"] == 0
    assert back["extra"]["retrain_results"][0]["verdict"]["champion_loss"] == pytest.approx(judged.champion_loss)
