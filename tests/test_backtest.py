"""``prae backtest``: outputs, causality, determinism, baselines, metrics, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prae.backtest.__main__ import main as backtest_main
from prae.backtest.baselines import autopilot, last_value, seasonal_naive, vpa, window_max
from prae.backtest.metrics import coverage, pit_coverage, slack_at_violation, wape
from prae.backtest.runner import BacktestConfig, run_backtest
from prae.model import ModelConfig, Predictor
from prae.resources import QUANTILE_COLUMNS
from prae.traces import load_trace

STEP = 300
TINY = ModelConfig(window_steps=16, horizon_steps=4, hidden_size=16)


def make_long_table(n_series: int = 3, days: float = 2.0, seed: int = 0) -> pd.DataFrame:
    """Irregular samples with gaps; one series has no disk/net, one is 64x bigger."""
    rng = np.random.default_rng(seed)
    rows = []
    n = int(days * 86400 / STEP)
    for s in range(n_series):
        t = 1_700_000_000 + s * 600 + np.arange(n) * STEP + rng.integers(-20, 20, n)
        keep = rng.random(n) > 0.05  # 5 % of samples missing
        size = 64.0 if s == 1 else 1.0
        level = size * (1 + 0.5 * np.sin(2 * np.pi * np.arange(n) / 288)) * rng.lognormal(0, 0.3, n)
        df = pd.DataFrame(
            {
                "series_id": f"s{s}",
                "timestamp": t,
                "cpu": level,
                "mem": size * 1e9 * (1 + 0.1 * rng.random(n)),
                "disk": np.nan if s == 2 else rng.exponential(1e6, n),
                "net": np.nan if s == 2 else rng.exponential(1e5, n),
            }
        )
        rows.append(df[keep])
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module")
def trace_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("trace") / "long.csv"
    make_long_table().to_csv(p, index=False)
    return p


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    Predictor.create(TINY, seed=0).save(p)
    return p


def cli(trace: Path, out: Path, ckpt: Path, *extra: str) -> int:
    return backtest_main(
        [
            "--trace",
            str(trace),
            "--format",
            "generic",
            "--lead-s",
            "900",
            "--out",
            str(out),
            "--checkpoint",
            str(ckpt),
            "--retrain-every-s",
            "43200",
            "--retrain-windows",
            "64",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def cli_out(tmp_path_factory: pytest.TempPathFactory, trace_csv: Path, tiny_ckpt: Path) -> Path:
    out = tmp_path_factory.mktemp("bt") / "out"
    assert cli(trace_csv, out, tiny_ckpt) == 0
    return out


def test_cli_writes_forecasts_summary_and_plots(
    cli_out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    df = pd.read_parquet(cli_out / "forecasts.parquet")
    assert list(df.columns[:4]) == ["series_id", "issued_at", "target_ts", "resource"]
    assert set(QUANTILE_COLUMNS) | {"alloc"} <= set(df.columns)
    assert ((df.target_ts - df.issued_at) == 900).all()
    q = df[list(QUANTILE_COLUMNS)].to_numpy()
    assert (np.diff(q, axis=1) >= 0).all() and (q >= 0).all() and df.alloc.notna().all()
    # series s2 records no disk/net; every resource a series records has a row per step
    assert set(df[df.series_id == "s2"].resource) == {"cpu", "mem"}
    assert set(df[df.series_id == "s0"].resource) == {"cpu", "mem", "disk", "net"}
    for sid, g in df.groupby("series_id"):
        first = g.issued_at.min()
        steps = g[g.resource == "cpu"].issued_at.diff().dropna()
        assert (steps == STEP).all()  # every step, on the regular grid
        assert first - start_of(sid) >= 3600 - 20  # nothing in the first hour
    base = pd.read_parquet(cli_out / "baselines.parquet")
    assert len(base) == len(df)
    assert {"last_value", "max_1h", "vpa", "autopilot", "seasonal_naive", "oracle"} <= set(
        base.columns
    )
    summary = pd.read_csv(cli_out / "summary.csv")
    assert {"prae", "last_value", "vpa", "autopilot", "oracle"} <= set(summary.policy)
    assert {"wape", "pinball", "cov_q0.9", "slack@1%", "slack@5%"} <= set(summary.columns)
    assert (cli_out / "summary.txt").read_text().startswith("Per policy")
    for png in ("slack_vs_violation.png", "coverage.png", "forecast_examples.png"):
        assert (cli_out / png).stat().st_size > 1000


def start_of(series_id: str) -> float:
    df = make_long_table()
    return float(df[df.series_id == series_id].timestamp.min())


def test_same_seed_same_forecasts(
    cli_out: Path, trace_csv: Path, tiny_ckpt: Path, tmp_path: Path
) -> None:
    assert cli(trace_csv, tmp_path / "again", tiny_ckpt, "--no-plots") == 0
    a = pd.read_parquet(cli_out / "forecasts.parquet")
    b = pd.read_parquet(tmp_path / "again" / "forecasts.parquet")
    pd.testing.assert_frame_equal(a, b)


def test_future_data_does_not_change_earlier_forecasts(trace_csv: Path) -> None:
    series = load_trace(trace_csv, "generic")
    cfg = BacktestConfig(retrain_every_s=43200, retrain_windows=64, seed=1)
    predictor = Predictor.create(TINY, seed=0)
    cut = series[0].start_s + 30 * 3600  # mid-block, after one retraining
    a = run_backtest(series, predictor, cfg)
    changed = []
    for s in series:
        v = s.values.copy()
        v[s.timestamps > cut] *= 7.0
        v[s.timestamps > cut + 7200, 0] = np.nan
        changed.append(type(s)(s.series_id, s.start_s, s.step_s, v, s.source))
    b = run_backtest(changed, predictor, cfg)
    g = a.grid
    issued = g.starts[:, None] + (np.arange(g.n_steps)[None, :] - g.offsets[:, None]) * g.step_s
    before = issued <= cut
    assert before.sum() > 100 and (~before).sum() > 100
    for name in ("raw", "calibrated"):
        x, y = getattr(a, name)[before], getattr(b, name)[before]
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.alloc[0.01][before], b.alloc[0.01][before])
    for k in a.baselines:
        if k != "oracle":
            np.testing.assert_array_equal(a.baselines[k][before], b.baselines[k][before])
    assert not np.allclose(np.nan_to_num(a.raw[~before]), np.nan_to_num(b.raw[~before]))
    assert predictor.version == Predictor.create(TINY, seed=0).version  # caller's model untouched
    assert len({v for _, v in a.versions}) == len(a.versions) > 1  # retrained daily-ish


def test_bad_inputs_exit_2_with_the_fix(
    tmp_path: Path, tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(tmp_path / "nope.csv", tmp_path / "o", tiny_ckpt) == 2
    assert "nope.csv" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"sid": ["a"], "timestamp": [0], "cpu": [1.0]}).to_csv(bad, index=False)
    assert cli(bad, tmp_path / "o", tiny_ckpt) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "series_id" in err and "Fix" in err
    good = tmp_path / "good.csv"
    make_long_table(1, 0.5).to_csv(good, index=False)
    assert (
        backtest_main(
            [
                "--trace",
                str(good),
                "--lead-s",
                "1000",
                "--out",
                str(tmp_path / "o"),
                "--checkpoint",
                str(tiny_ckpt),
            ]
        )
        == 2
    )
    assert "multiple of the grid step" in capsys.readouterr().err
    assert (
        backtest_main(
            [
                "--trace",
                str(good),
                "--out",
                str(tmp_path / "o"),
                "--checkpoint",
                str(tmp_path / "missing.pt"),
            ]
        )
        == 2
    )
    assert "missing.pt" in capsys.readouterr().err
    args = ["--trace", str(good), "--out", str(tmp_path / "o"), "--checkpoint", str(tiny_ckpt)]
    assert backtest_main([*args, "--tail-resources", "disk,gpu"]) == 2
    assert "--tail-resources" in (err := capsys.readouterr().err) and "gpu" in err and "cpu,mem,disk,net" in err
    assert backtest_main([*args, "--analog-weight", "1.5"]) == 2
    assert "--analog-weight must be in [0, 1], got 1.5" in capsys.readouterr().err


def test_baselines_are_causal_and_right() -> None:
    y = np.array([1.0, np.nan, 3.0, 2.0, 5.0, 4.0])[None, :, None]
    np.testing.assert_array_equal(last_value(y)[0, :, 0], [1, 1, 3, 2, 5, 4])
    np.testing.assert_array_equal(window_max(y, 3)[0, :, 0], [1, 1, 3, 3, 5, 5])
    np.testing.assert_array_equal(seasonal_naive(y, 1, 3)[0, 2:, 0], [1, np.nan, 3, 2])
    flat = np.full((1, 200, 2), 4.0)
    v = vpa(flat, 12.0)[0, -1]
    assert np.all((v >= 1.15 * 4.0) & (v <= 1.15 * 4.0 * 1.06))
    spiky = np.where(np.arange(400) % 10 == 0, 10.0, 1.0)[None, :, None].repeat(2, axis=2)
    ap = autopilot(spiky, 12.0)[0, -1]
    assert np.all(ap >= 10.0)  # p95/p98 of a 10 %-of-the-time spike is the spike
    # changing the future does not change an earlier recommendation
    y2 = spiky.copy()
    y2[:, 300:] = 50.0
    np.testing.assert_array_equal(vpa(spiky, 12.0)[:, :300], vpa(y2, 12.0)[:, :300])


def test_metrics_worked_numbers() -> None:
    y = np.array([0.8, 0.9, 1.2, 2.0])
    r = slack_at_violation(y, np.ones(4), np.zeros(4), 0.25)
    assert r.margin == pytest.approx(0.2) and r.violation == pytest.approx(0.25)
    assert r.slack == pytest.approx((0.4 + 0.3 + 0.0 + 0.0) / 4.8)
    assert wape(np.array([1.0, 3.0]), np.array([2.0, 3.0])) == pytest.approx(0.25)
    never = slack_at_violation(np.array([1.0, 1.0]), np.zeros(2), np.zeros(2), 0.0)
    assert np.isinf(never.margin)


def test_pit_coverage_spreads_a_tie_over_the_tied_levels() -> None:
    """Rows: below q0.9 (1), above (0), tied at q0.5..q0.99 ((0.9 - 0.5) / (0.99 - 0.5)),
    tied at q0.9 only (1: the PIT is exactly 0.9), tied at q0.9..q0.99 (0: the CDF is 0.9
    just below the value). Without ties it is the plain one-sided coverage."""
    levels = (0.1, 0.5, 0.9, 0.95, 0.99)
    q = np.array(
        [
            [1.0, 2.0, 3.0, 4.0, 5.0],
            [1.0, 2.0, 3.0, 4.0, 5.0],
            [1.0, 6.9, 6.9, 6.9, 6.9],
            [1.0, 2.0, 3.0, 4.0, 5.0],
            [1.0, 2.0, 3.0, 3.0, 3.0],
        ]
    )
    y = np.array([2.5, 3.5, 6.9, 3.0, 3.0])
    got = pit_coverage(y, q, levels, 0.9)
    assert got == pytest.approx((1 + 0 + 0.4 / 0.49 + 1 + 0) / 5)
    assert coverage(y, q[:, 2]) == pytest.approx(4 / 5)  # y <= q0.9 counts every tie
    free = np.array([2.5, 3.5, 0.5, 9.0, 2.9])
    assert pit_coverage(free, q, levels, 0.9) == coverage(free, q[:, 2])


def test_median_choice_is_causal_and_uses_the_last_value_where_it_wins() -> None:
    from prae.backtest.runner import Grid, choose_median

    rng = np.random.default_rng(0)
    s, t, lead = 2, 400, 3
    y = np.empty((s, t, 4))
    y[0] = 5.0  # flat: the last value is exact
    y[1] = rng.lognormal(0, 1, (t, 4))  # noise around a level the "model" knows
    raw = np.empty((s, t, 4, 5), np.float32)
    raw[0] = (5.0 + rng.normal(0, 0.3, (t, 4)))[..., None] + np.array([-1, 0, 1, 1.5, 2])
    raw[1] = np.exp(np.array([-1.28, 0, 1.28, 1.64, 2.33]))  # the true quantiles
    raw[:, t - lead :] = np.nan  # targets outside the series
    g = Grid(
        ("a", "b"), 300.0, np.zeros(2), np.zeros(2, int), np.full(2, t), y, np.ones((2, 4), bool)
    )
    cfg = BacktestConfig(median_half_life=48.0)
    med = choose_median(g, raw, cfg, lead)
    np.testing.assert_allclose(med[0, 100 : t - lead], 5.0)  # flat series: the last value
    # noisy one: around the model's e**0. The analog (the median of 10 past outcomes of
    # the same noise) is nearly as good and shares the weight; the last value, far worse,
    # keeps a small one (SHARPNESS) that a run of lucky steps can raise for a while
    assert abs(np.median(med[1, 100 : t - lead]) - 1.0) < 0.02
    assert np.mean(np.abs(med[1, 100 : t - lead] - 1.0) < 0.3) > 0.9
    # changing data after step 250 changes no choice issued at or before 250
    y2 = y.copy()
    y2[:, 251:] *= 3.0
    g2 = Grid(g.series_ids, g.step_s, g.starts, g.offsets, g.lengths, y2, g.has_resource)
    med2 = choose_median(g2, raw, cfg, lead)
    np.testing.assert_array_equal(med[:, :251], med2[:, :251])
    assert not np.allclose(med[0, 260 : t - lead], med2[0, 260 : t - lead])


def test_analog_quantiles_narrow_the_calm_steps_of_a_workload_that_spikes_on_a_schedule() -> None:
    """Memory at 1 GB that spikes to 3 GB every hour (12 steps): the model alone (an
    untrained tiny one here) gives every step the same wide upper tail, since it cannot
    tell the phase; blended with the analog quantiles (what followed the 60 moments of
    the series' own past most like now) the steps whose target is far from a spike get a
    far lower q0.99, and the spikes are still covered. ``analog_weight`` 0 is the model's
    quantiles alone."""
    from prae.traces.series import Series

    rng = np.random.default_rng(0)
    n = 3 * 288
    phase = np.arange(n) % 12
    mem = 1e9 * np.where(phase == 0, 3.0, 1.0) * rng.lognormal(0, 0.05, n)
    cpu = rng.lognormal(0, 0.1, n)
    values = np.stack([cpu, mem, rng.exponential(1e6, n), rng.exponential(1e5, n)], axis=1)
    series = [Series("spiky", 1_700_000_000.0, float(STEP), values, "test")]
    runs = {
        w: run_backtest(
            series, Predictor.create(TINY, seed=0), BacktestConfig(retrain_every_s=None, analog_weight=w)
        )
        for w in (0.0, 0.75)
    }
    rows = np.arange(n)
    target_phase = (rows + runs[0.0].lead_steps) % 12
    y = runs[0.0].actual[0, :, 1]
    late = (rows > 288) & ~np.isnan(y)  # a day in: the analog has its 60 moments
    calm = late & (target_phase >= 4) & (target_phase <= 8)
    spike = late & (target_phase == 0)
    q99 = {w: r.calibrated[0, :, 1, -1] for w, r in runs.items()}
    q90 = {w: r.calibrated[0, :, 1, 2] for w, r in runs.items()}
    calm_ratio = {w: float(np.mean(q99[w][calm] / y[calm])) for w in runs}
    assert calm_ratio[0.75] < 0.8 * calm_ratio[0.0], calm_ratio  # measured 3.38 -> 2.34
    spike_cov = {w: float(np.mean(y[spike] <= q90[w][spike])) for w in runs}
    assert spike_cov[0.75] >= spike_cov[0.0] - 0.02 and spike_cov[0.75] > 0.85, spike_cov
    early = rows < 60  # fewer than 60 moments known: the model's quantiles, untouched
    np.testing.assert_array_equal(
        runs[0.75].calibrated[0, early], runs[0.0].calibrated[0, early]
    )


def test_the_tail_resources_help_names_the_default_the_code_uses() -> None:
    """The flag's help spells the default out (the CLI does not import the model package,
    and its torch, to build the parser); it must say what ``TAIL_RESOURCES`` is."""
    import argparse

    from prae.backtest.cli import add_arguments
    from prae.model.tails import TAIL_RESOURCES

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    action = next(a for a in parser._actions if "--tail-resources" in a.option_strings)
    assert f"TAIL_RESOURCES: {','.join(TAIL_RESOURCES)};" in (action.help or "")
