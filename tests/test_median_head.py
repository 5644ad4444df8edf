"""The median head: its inputs, its place in the predictor and the checkpoint, its training.
No Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prae.errors import CheckpointError
from prae.model import ModelConfig, Predictor, concat_windows, fit, windows_from_series
from prae.model.features import build_features
from prae.model.median_fit import fit_median_head, validation_wape
from prae.model.median_head import (
    MedianHead,
    MedianHeadConfig,
    feature_names,
    summary_features,
)
from prae.model.training import _with_head_median, evaluate, window_losses
from prae.resources import QUANTILES
from prae.traces.series import Series
from train.median_head import is_validation_series, padded_windows, train_median_head

W, H = 48, 4
CONFIG = ModelConfig(window_steps=W, horizon_steps=H, hidden_size=8)
HEAD = MedianHeadConfig(window_steps=W, horizon_steps=H, hidden_size=16)
I50 = QUANTILES.index(0.5)


def forward_filled(x: np.ndarray) -> np.ndarray:
    """The reference for the head's filling: last observation carried forward, steps before
    the first observation take its value (one 1-D series)."""
    out = x.copy()
    seen = np.flatnonzero(~np.isnan(x))
    out[: seen[0]] = x[seen[0]]
    for t in range(seen[0] + 1, len(x)):
        if np.isnan(out[t]):
            out[t] = out[t - 1]
    return out


def test_summary_features_match_a_numpy_reference() -> None:
    rng = np.random.default_rng(1)
    live = rng.lognormal(0, 1, size=(3, W, 4)).astype(np.float32) * [4.0, 2e9, 1e6, 5e5]
    live[0, :10, 0] = np.nan  # a late start
    live[1, rng.random(W) < 0.3, 2] = np.nan  # gaps
    live[2, :, 3] = np.nan  # never observed
    inputs, scale, present = summary_features(torch.from_numpy(live.astype(np.float32)))
    names = feature_names(W)
    assert inputs.shape == (3, 4, len(names)) and present[2, 3].item() is False
    for b, r in [(0, 0), (1, 2), (2, 1)]:
        f = forward_filled(live[b, :, r].astype(np.float64))
        s = f.mean()
        assert scale[b, r].item() == pytest.approx(s, rel=1e-5)
        got = dict(zip(names, inputs[b, r].double().numpy(), strict=True))
        assert got["lag0"] == pytest.approx(f[-1] / s, rel=1e-4)
        assert got["lag47"] == pytest.approx(f[0] / s, rel=1e-4)
        assert got["mean12"] == pytest.approx(f[-12:].mean() / s, rel=1e-4)
        assert got["median6"] == pytest.approx(np.median(f[-6:]) / s, rel=1e-4)
        assert got["max48"] == pytest.approx(f.max() / s, rel=1e-4)
        assert got["std12"] == pytest.approx(f[-12:].std() / s, rel=1e-3)
        ewma = f[0]
        for v in f[1:]:
            ewma = 0.2 * v + 0.8 * ewma
        assert got["ewma0.2"] == pytest.approx(ewma / s, rel=1e-4)
        assert got["observed12"] == pytest.approx(np.mean(~np.isnan(live[b, -12:, r])))
        assert got["log_scale"] == pytest.approx(np.log(s), rel=1e-4)


def test_an_untrained_head_forecasts_the_last_value() -> None:
    live = np.random.default_rng(2).random((2, W, 4)).astype(np.float32) * 5
    live[0, -3:, 1] = np.nan  # the last observation is three steps back
    live[1, :, 2] = np.nan
    med = MedianHead(HEAD)(torch.from_numpy(live)).numpy()
    assert med.shape == (2, H, 4)
    np.testing.assert_allclose(med[0, :, 0], live[0, -1, 0], rtol=1e-5)
    np.testing.assert_allclose(med[0, :, 1], live[0, -4, 1], rtol=1e-5)
    assert np.isnan(med[1, :, 2]).all() and np.isfinite(med[1, :, [0, 1, 3]]).all()


def shifted_head(shift: float) -> MedianHead:
    """A head whose median is the last value plus ``shift`` window means, every horizon."""
    head = MedianHead(HEAD)
    for mlp in head.mlps:
        torch.nn.init.constant_(mlp[-1].bias, shift)
    return head


def test_the_predictor_serves_the_heads_median_and_keeps_its_quantiles_monotone() -> None:
    p = Predictor.create(CONFIG, seed=0)
    live = 2.0 + np.random.default_rng(3).random((4, W, 4)).astype(np.float32)
    live[3, :, 1] = np.nan  # a resource never observed: forecast 0, as without a head
    without = p.predict(live)
    v0 = p.version
    p.set_median_head(shifted_head(0.25))
    with_head = p.predict(live)
    assert p.version != v0
    head_median = p.median_head(torch.from_numpy(live)).numpy()  # type: ignore[misc]
    # every served quantile set is the LSTM's with q0.5 replaced by the head's, sorted
    expected = without.copy()
    ok = ~np.isnan(head_median)
    expected[..., I50] = np.where(ok, head_median, without[..., I50])
    np.testing.assert_allclose(with_head, np.sort(expected, axis=-1), rtol=1e-6)
    assert (np.diff(with_head, axis=-1) >= 0).all()
    assert (with_head[3, :, 1] == 0).all()
    p.set_median_head(None)
    np.testing.assert_array_equal(p.predict(live), without)
    assert p.version == v0


def test_checkpoint_carries_the_head_and_old_checkpoints_still_load(tmp_path: Path) -> None:
    p = Predictor.create(CONFIG, seed=0)
    p.save(tmp_path / "plain.pt")
    assert Predictor.load(tmp_path / "plain.pt").median_head is None
    p.set_median_head(shifted_head(0.1))
    p.save(tmp_path / "head.pt")
    back = Predictor.load(tmp_path / "head.pt")
    live = np.random.default_rng(4).random((3, 30, 4)).astype(np.float32)
    assert back.version == p.version
    np.testing.assert_array_equal(back.predict(live), p.predict(live))

    blob = torch.load(tmp_path / "head.pt", weights_only=True)
    blob["median_head"]["config"]["horizon_steps"] = H + 1
    torch.save(blob, tmp_path / "horizon.pt")
    with pytest.raises(CheckpointError, match="median head.*do not match.*Fix"):
        Predictor.load(tmp_path / "horizon.pt")
    blob = torch.load(tmp_path / "head.pt", weights_only=True)
    blob["median_head"]["state_dict"]["mu"] = torch.zeros(2, 2)
    torch.save(blob, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="median head weight mu has shape.*Fix"):
        Predictor.load(tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="does not match"):
        p.set_median_head(MedianHead(MedianHeadConfig(window_steps=W, horizon_steps=H + 1)))


def periodic_series(n: int, seed: int) -> np.ndarray:
    """A 12-step sawtooth with noise on every resource: the last value is always one phase
    behind, the window says where the cycle is."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    level = rng.uniform(1, 50, size=4)
    saw = 1.0 + (t % 12) / 6.0
    return (saw[:, None] * level * rng.lognormal(0, 0.05, size=(n, 4))).astype(np.float32)


def test_training_learns_what_the_last_value_misses() -> None:
    train = [windows_from_series(periodic_series(400, s), None, W, H, 2) for s in range(12)]
    windows = concat_windows(train)
    validation = concat_windows([windows_from_series(periodic_series(300, 99), None, W, H)])
    head = MedianHead(HEAD)
    before, last = validation_wape(head, validation, 3)
    np.testing.assert_allclose(before, last)  # untrained = the last value
    metrics = fit_median_head(head, windows, validation, epochs=6, batch_size=256, lr=1e-2)
    after, last = validation_wape(head, validation, 3)
    assert (after < 0.5 * last).all(), (after, last)
    assert metrics["validation_wape_ratio"] == pytest.approx(list(after / last), abs=1e-3)


def test_fine_tuning_trains_and_judges_the_served_median() -> None:
    windows = concat_windows(
        [windows_from_series(periodic_series(300, s), None, W, H, 2) for s in range(4)]
    )
    p = Predictor.create(CONFIG, seed=0)
    index = np.arange(len(windows))
    plain = window_losses(p, windows)
    p.set_median_head(shifted_head(3.0))  # a median 3 window means too high
    shifted = window_losses(p, windows)
    assert (shifted > plain).all()  # the losses are those of the quantiles served
    # the median the loss sees, back in raw units, is the one ``predict`` serves
    live = torch.from_numpy(windows.batch(index[:64])[0])
    features, scale, _, last = build_features(live)
    z = _with_head_median(p.module(features, last), p, live, scale)
    np.testing.assert_allclose(
        (z[..., I50] * scale[:, None, :]).detach().numpy(),
        p.median_head(live).numpy(),  # type: ignore[misc]
        rtol=1e-5,
    )
    head_params = [t.clone() for t in p.median_head.parameters()]  # type: ignore[union-attr]
    before = evaluate(p, windows, index)
    fit(p, windows, epochs=2, lr=1e-2, batch_size=64, val_fraction=0.0, level_power=1.0)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(head_params, p.median_head.parameters(), strict=True)  # type: ignore[union-attr]
    ]
    assert any(moved)
    assert evaluate(p, windows, index) < 0.5 * before


def test_train_median_head_fits_on_training_series_and_picks_epochs_on_validation_vms(
    tmp_path: Path,
) -> None:
    series = [
        Series(f"bitbrains:{vm}", 0.0, 300.0, periodic_series(400, vm).astype(np.float64))
        for vm in (1, 2, 3, 251, 252)
    ]
    p = Predictor.create(CONFIG, seed=0)
    metrics = train_median_head(p, series, epochs=2, stride=1, batch_size=256, log=None)
    assert (metrics["fit_series"], metrics["validation_series"]) == (3, 2)
    assert p.median_head is not None and len(metrics["best_epoch"]) == 4  # type: ignore[arg-type]
    p.save(tmp_path / "m.pt", metadata={"median_head": metrics})
    assert Predictor.load(tmp_path / "m.pt").version == p.version
    with pytest.raises(ValueError, match="no validation series"):
        train_median_head(p, series[:3], epochs=1, log=None)


def test_head_training_data_split_and_padding() -> None:
    assert is_validation_series("bitbrains:251") and is_validation_series("bitbrains:300")
    assert not is_validation_series("bitbrains:250")
    assert not is_validation_series("google:113/260") and not is_validation_series("alibaba:m_1")

    class S:
        series_id = "x"
        values = periodic_series(60, 0)

    w = padded_windows([S()], W, H, 1)  # type: ignore[list-item]
    live, _, y = w.batch(np.array([0, len(w) - 1]))
    # the first window holds the series' first row only; the last ends H rows before its end
    assert (~np.isnan(live[0])).all(axis=1).sum() == 1
    np.testing.assert_array_equal(live[0, -1], S.values[0])
    np.testing.assert_array_equal(y[1, -1], S.values[-1])


def test_per_level_weights_weigh_each_quantile_and_default_to_the_windows() -> None:
    from prae.model.training import pinball_loss

    rng = np.random.default_rng(5)
    z_pred = torch.from_numpy(rng.random((3, 2, 4, 5)).astype(np.float32))
    z_true = torch.from_numpy(rng.random((3, 2, 4)).astype(np.float32))
    mask = torch.from_numpy(rng.random((3, 2, 4)) > 0.2)
    q = torch.tensor(QUANTILES)
    w = torch.from_numpy(rng.random((3, 4)).astype(np.float32) + 0.5)
    same = pinball_loss(z_pred, z_true, mask, q, w[..., None].repeat(1, 1, 5))
    assert same.item() == pytest.approx(pinball_loss(z_pred, z_true, mask, q, w).item(), rel=1e-6)
    # weight only the median: the loss is the masked mean of its pinball alone
    only = torch.zeros(3, 4, 5)
    only[..., I50] = 1.0
    diff = z_true - z_pred[..., I50]
    expected = (0.5 * diff.abs())[mask].mean()
    assert pinball_loss(z_pred, z_true, mask, q, only).item() == pytest.approx(expected.item(), rel=1e-5)
