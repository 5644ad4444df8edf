"""Training the median head (``median_head.MedianHead``) on telemetry windows. Plain torch.

Loss: per resource, the mean absolute error of ``median / scale`` against ``y / scale``
(targets clipped at ``MAX_TARGET_RATIO``), each window weighted by its level to the power
``level_power`` (``training.level_weights``). 0.5 is the compromise measured: with power 1
(how the LSTM is trained) the MLP collapsed to the last value; with 0 a near-idle VM's
window counts as much as a busy one's, while the volume-weighted WAPE is made by the busy
ones.

Epoch choice: after each epoch every resource's MLP is scored on validation windows by the
WAPE of its median ``select_horizon`` steps ahead; each keeps its best epoch. The score is
reported as a ratio to the last value's WAPE on the same windows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from prae.model.features import MAX_TARGET_RATIO
from prae.model.median_head import MEDIAN_LEVEL_POWER, MedianHead, summary_features
from prae.model.training import TrainingWindows, level_weights

_STATS_WINDOWS = 200_000  # windows sampled for the inputs' mean and standard deviation
_EVAL_CHUNK = 16_384


def _inputs(windows: TrainingWindows, index: np.ndarray) -> tuple[torch.Tensor, ...]:
    live, _, y = windows.batch(index)
    inputs, scale, present = summary_features(torch.from_numpy(np.ascontiguousarray(live)))
    return inputs, scale, present, torch.from_numpy(np.ascontiguousarray(y))


def set_standardisation(head: MedianHead, windows: TrainingWindows, seed: int) -> None:
    """Set ``mu``/``sd`` per resource from a sample of the windows where it was observed."""
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.permutation(len(windows))[:_STATS_WINDOWS])
    inputs, _, present, _ = _inputs(windows, sample)
    for r in range(head.config.n_resources):
        x = inputs[present[:, r], r]
        if len(x) > 1:
            head.mu[r] = x.mean(0)
            head.sd[r] = x.std(0) + 1e-6


@torch.no_grad()
def validation_wape(
    head: MedianHead, windows: TrainingWindows, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """WAPE of the head's median and of the last value, ``horizon`` steps ahead, per
    resource. Returns two arrays of shape (R,) (NaN where no target was observed)."""
    r_count = head.config.n_resources
    err, err_last, total = np.zeros(r_count), np.zeros(r_count), np.zeros(r_count)
    head.eval()
    for lo in range(0, len(windows), _EVAL_CHUNK):
        index = np.arange(lo, min(len(windows), lo + _EVAL_CHUNK))
        inputs, scale, present, y = _inputs(windows, index)
        for r in range(r_count):
            target = y[:, horizon - 1, r]
            keep = present[:, r] & ~torch.isnan(target)
            pred = head.scaled_median(inputs[keep, r], r)[:, horizon - 1].clamp(min=0)
            s, t = scale[keep, r].double(), target[keep].double()
            err[r] += (pred.double() * s - t).abs().sum().item()
            err_last[r] += (inputs[keep, r, 0].double() * s - t).abs().sum().item()
            total[r] += t.abs().sum().item()
    with np.errstate(invalid="ignore", divide="ignore"):
        return err / total, err_last / total


def fit_median_head(
    head: MedianHead,
    windows: TrainingWindows,
    validation: TrainingWindows,
    epochs: int = 8,
    lr: float = 2e-3,
    batch_size: int = 4096,
    seed: int = 0,
    level_power: float = MEDIAN_LEVEL_POWER,
    select_horizon: int = 3,
    log: Callable[[str], object] | None = None,
) -> dict[str, Any]:
    """Train every resource's MLP on ``windows`` (one-cycle Adam), keep each one's best
    epoch on ``validation``. Deterministic for ``seed`` on a given torch build and thread
    count. Returns metrics: per resource the chosen epoch, its validation WAPE ratio to
    the last value, and the wall time."""
    if len(windows) < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} windows, got {len(windows)}")
    if not 1 <= select_horizon <= head.config.horizon_steps:
        raise ValueError(f"select_horizon must be in 1..{head.config.horizon_steps}")
    t0 = time.time()
    torch.manual_seed(seed)
    set_standardisation(head, windows, seed)
    n_res = head.config.n_resources
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    steps_per_epoch = len(windows) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch)
    rng = np.random.default_rng(seed)
    best: list[tuple[float, dict[str, torch.Tensor] | None, int]] = [(np.inf, None, -1)] * n_res
    history: list[list[float]] = []
    for epoch in range(epochs):
        head.train()
        perm = rng.permutation(len(windows))
        for i in range(steps_per_epoch):
            index = np.sort(perm[i * batch_size : (i + 1) * batch_size])
            inputs, scale, present, y = _inputs(windows, index)
            weight = level_weights(scale, present, level_power)
            target = (y.clamp(min=0) / scale[:, None, :]).clamp(max=MAX_TARGET_RATIO)
            mask = ~torch.isnan(target) & present[:, None, :]
            target = torch.nan_to_num(target)
            loss = torch.zeros(())
            for r in range(n_res):
                err = (head.scaled_median(inputs[:, r], r) - target[..., r]).abs() * mask[..., r]
                loss = loss + (weight[:, r, None] * err).sum() / mask[..., r].sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        wape, wape_last = validation_wape(head, validation, select_horizon)
        ratio = wape / wape_last
        history.append([round(float(v), 4) for v in ratio])
        if log is not None:
            log(f"median head epoch {epoch}: loss {loss.item():.4f}, validation WAPE / last value {history[-1]}")
        for r in range(n_res):
            if np.isfinite(ratio[r]) and ratio[r] < best[r][0]:
                state = {k: v.detach().clone() for k, v in head.mlps[r].state_dict().items()}
                best[r] = (float(ratio[r]), state, epoch)
    for r, (_, state, _) in enumerate(best):
        if state is not None:
            head.mlps[r].load_state_dict(state)
    head.eval()
    return {
        "epochs": epochs,
        "select_horizon": select_horizon,
        "best_epoch": [b[2] for b in best],
        "validation_wape_ratio": [round(b[0], 4) for b in best],
        "history": history,
        "windows": len(windows),
        "validation_windows": len(validation),
        "wall_s": round(time.time() - t0, 1),
    }
