"""Training: windows from series, pinball loss, and a deterministic fine-tuning loop.

Windows are not materialised: ``TrainingWindows`` keeps the concatenated series and the
start index of every window, and batches are gathered on the fly. 400 Bitbrains series
(~3.4 M windows at stride 1) then cost ~55 MB instead of ~4 GB.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from prae.model.features import build_features, ratio_to_model_space, to_model_space
from prae.model.median_head import MEDIAN_LEVEL_POWER, summary_features
from prae.model.predictor import Predictor


@dataclass(frozen=True)
class TrainingWindows:
    """Training examples: window ``i`` is ``values[starts[i] : starts[i] + window_steps]``
    and its targets the next ``horizon_steps`` rows.

    values: shape (N, R) float32 raw units, NaN = missing (series concatenated).
    shadow: shape (N, R) float32 or None (no shadow anywhere).
    starts: shape (M,) int64.
    """

    values: np.ndarray
    shadow: np.ndarray | None
    starts: np.ndarray
    window_steps: int
    horizon_steps: int

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def batch(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Gather windows ``index`` (shape (B,)) -> live (B, W, R), shadow or None, y (B, H, R)."""
        w, h = self.window_steps, self.horizon_steps
        rows = self.starts[index][:, None] + np.arange(w + h)[None, :]
        block = self.values[rows]
        shadow = self.shadow[rows[:, :w]] if self.shadow is not None else None
        return block[:, :w], shadow, block[:, w:]


def windows_from_series(
    live: np.ndarray,
    shadow: np.ndarray | None,
    window_steps: int,
    horizon_steps: int,
    stride: int = 1,
) -> TrainingWindows:
    """All windows of one series whose targets have at least one observation.

    live: shape (N, R) raw units (NaN = missing); shadow: shape (N, R) or None.
    A series shorter than window + horizon yields zero windows.
    """
    live = np.asarray(live, dtype=np.float32)
    if live.ndim != 2:
        raise ValueError(f"live must have shape (N, R), got {live.shape}")
    if shadow is not None:
        shadow = np.asarray(shadow, dtype=np.float32)
        if shadow.shape != live.shape:
            raise ValueError(f"shadow shape {shadow.shape} must equal live shape {live.shape}")
    n = live.shape[0]
    last = n - window_steps - horizon_steps
    starts = (
        np.arange(0, last + 1, max(1, int(stride)), dtype=np.int64)
        if last >= 0
        else np.zeros(0, np.int64)
    )
    if starts.size:
        observed = (~np.isnan(live)).any(axis=1).astype(np.int64)
        csum = np.concatenate([[0], np.cumsum(observed)])
        tgt = csum[starts + window_steps + horizon_steps] - csum[starts + window_steps]
        hist = csum[starts + window_steps] - csum[starts]
        starts = starts[(tgt > 0) & (hist > 0)]
    return TrainingWindows(live, shadow, starts, window_steps, horizon_steps)


def split_newest(
    live: np.ndarray,
    shadow: np.ndarray | None,
    window_steps: int,
    horizon_steps: int,
    holdout_rows: int,
) -> tuple[TrainingWindows, TrainingWindows]:
    """One series' windows, split by time: (train, holdout).

    The training windows are made of the rows before the newest ``holdout_rows`` only, so
    no training target is a held-out row. The holdout has one window per held-out row,
    whose first target is that row; the targets past the series' end are missing (NaN,
    masked out of the loss), so the newest rows are judged even when there are fewer of
    them than the model's horizon (a live run's first minutes). Its inputs may reach back
    into training rows: they are the past it is forecast from, as when serving.
    """
    live = np.asarray(live, dtype=np.float32)
    n, r = live.shape
    hold = max(0, min(int(holdout_rows), n))
    cut = n - hold
    pad = np.full((horizon_steps - 1, r), np.nan, np.float32)
    values = np.vstack([live, pad])
    side = None if shadow is None else np.vstack([np.asarray(shadow, dtype=np.float32), pad])
    every = windows_from_series(values, side, window_steps, horizon_steps)
    # a window entirely before the cut has the same observed rows as in the rows before it
    train = every.starts[every.starts + window_steps + horizon_steps <= cut]
    held = every.starts[every.starts + window_steps >= cut] if hold else every.starts[:0]
    return (
        TrainingWindows(values, side, train, window_steps, horizon_steps),
        TrainingWindows(values, side, held, window_steps, horizon_steps),
    )


def concat_windows(items: list[TrainingWindows]) -> TrainingWindows:
    """One TrainingWindows from many (same window/horizon); start indices are re-based."""
    if not items:
        raise ValueError("concat_windows needs at least one TrainingWindows")
    w, h = items[0].window_steps, items[0].horizon_steps
    if any(it.window_steps != w or it.horizon_steps != h for it in items):
        raise ValueError("all TrainingWindows must share window_steps and horizon_steps")
    any_shadow = any(it.shadow is not None for it in items)
    values, shadows, starts, offset = [], [], [], 0
    for it in items:
        values.append(it.values)
        if any_shadow:
            shadows.append(it.shadow if it.shadow is not None else np.full_like(it.values, np.nan))
        starts.append(it.starts + offset)
        offset += it.values.shape[0]
    return TrainingWindows(
        np.concatenate(values),
        np.concatenate(shadows) if any_shadow else None,
        np.concatenate(starts) if starts else np.zeros(0, np.int64),
        w,
        h,
    )


def pinball_loss(
    z_pred: torch.Tensor,
    z_true: torch.Tensor,
    mask: torch.Tensor,
    quantiles: torch.Tensor,
    weight: torch.Tensor | None = None,
    per_window: bool = False,
) -> torch.Tensor:
    """Mean pinball loss over observed targets (weighted mean if ``weight`` is given);
    ``per_window``: one mean per window, shape (B,), instead of one for the batch.

    z_pred: shape (B, H, R, Q); z_true: shape (B, H, R) (NaN allowed where mask is
    False); mask: shape (B, H, R) bool; quantiles: shape (Q,); weight: shape (B, R)
    per window and resource (see ``level_weights``), (B, R, Q) per level too, or None
    (all 1).
    """
    diff = torch.where(mask, z_true, torch.zeros_like(z_true))[..., None] - z_pred
    loss = torch.maximum(quantiles * diff, (quantiles - 1) * diff)
    m = mask[..., None].to(loss.dtype)
    if weight is not None and weight.dim() == 3:  # per level: m becomes (B, H, R, Q)
        m = m * weight[:, None]
        levels = 1
    else:
        # m stays (B, H, R, 1), each entry standing for every level: the arithmetic the
        # shipped LSTM was trained with, unchanged
        if weight is not None:
            m = m * weight[:, None, :, None]
        levels = quantiles.numel()
    if per_window:
        return (loss * m).sum(dim=(1, 2, 3)) / (m.sum(dim=(1, 2, 3)) * levels).clamp(min=1e-12)
    return (loss * m).sum() / (m.sum() * levels).clamp(min=1e-12)


def level_weights(
    scale: torch.Tensor, present: torch.Tensor, power: float, cap: float = 10.0
) -> torch.Tensor:
    """Per-window loss weights from the window's level, so training matches volume-
    weighted metrics (WAPE, slack pool raw units: a busy VM's error costs more cores).

    scale: shape (B, R) window mean in raw units; present: shape (B, R) bool.
    w = (scale / batch mean of scale) ** power per resource, capped at ``cap`` (one huge
    window must not be the whole batch) and renormalised to mean 1. In linear target
    space power 1 makes the loss proportional to raw-unit pinball. Worked number:
    scales 1, 1, 10 (mean 4) with power 1 give 0.25, 0.25, 2.5 (already mean 1).
    Returns shape (B, R), 0 where not present.
    """
    s = torch.where(present, scale, torch.zeros_like(scale))
    n = present.sum(dim=0).clamp(min=1)
    mean = s.sum(dim=0) / n
    w = (s / mean.clamp(min=1e-30)) ** power
    w = torch.where(present, w.clamp(max=cap), torch.zeros_like(w))
    return w / (w.sum(dim=0) / n).clamp(min=1e-30)


def _batch_loss(
    predictor: Predictor,
    live: np.ndarray,
    shadow: np.ndarray | None,
    y: np.ndarray,
    q: torch.Tensor,
    device: str,
    level_power: float = 0.0,
    per_window: bool = False,
) -> torch.Tensor:
    lt = torch.from_numpy(np.ascontiguousarray(live, dtype=np.float32)).to(device)
    st = (
        torch.from_numpy(np.ascontiguousarray(shadow, dtype=np.float32)).to(device)
        if shadow is not None
        else None
    )
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(device)
    features, scale, present, last = build_features(lt, st)
    z_pred = predictor.module(features, last)
    if predictor.median_head is not None:
        z_pred = _with_head_median(z_pred, predictor, lt, scale)
    z_true = to_model_space(yt, scale, predictor.config.target_space)
    mask = ~torch.isnan(yt) & present[:, None, :]
    weight = None
    if level_power > 0:
        weight = level_weights(scale, present, level_power)
        if predictor.median_head is not None:
            # the head's median keeps the weighting it was pretrained with (power 1 from
            # scratch collapsed it to the last value), the LSTM's levels theirs
            weight = weight[..., None].repeat(1, 1, len(predictor.quantiles))
            weight[..., predictor.quantiles.index(0.5)] = level_weights(
                scale, present, MEDIAN_LEVEL_POWER
            )
    return pinball_loss(z_pred, z_true, mask, q, weight, per_window)


def _with_head_median(
    z_pred: torch.Tensor, predictor: Predictor, live: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """The quantiles as served (before ``predict`` re-sorts them), in model space: the
    LSTM's, with q0.5 the median head's (moved from the head's window scale to the LSTM's),
    so a fine-tune trains the served median and the champion/challenger losses judge it."""
    head = predictor.median_head
    assert head is not None
    inputs, head_scale, _ = summary_features(live)
    ratio = head.scaled_medians(inputs) * (head_scale / scale)[:, None, :]
    median = ratio_to_model_space(ratio.clamp(min=0), predictor.config.target_space)
    i50 = predictor.quantiles.index(0.5)
    return torch.cat([z_pred[..., :i50], median[..., None], z_pred[..., i50 + 1 :]], dim=-1)


def _truncate_history(live: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
    """Augmentation: blank a random prefix of some windows, so short histories (a workload's
    first minutes, left-padded with NaN) are in-distribution."""
    if prob <= 0:
        return live
    b, w, _ = live.shape
    cut = rng.integers(1, w, size=b)
    apply = rng.random(b) < prob
    blank = (np.arange(w)[None, :] < cut[:, None]) & apply[:, None]
    out = live.copy()
    out[blank] = np.nan
    return out


def fit(
    predictor: Predictor,
    windows: TrainingWindows,
    epochs: int,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 256,
    *,
    samples_per_epoch: int | None = None,
    val_fraction: float = 0.1,
    truncate_prob: float = 0.15,
    cosine: bool = False,
    log_every: int = 0,
    max_seconds: float | None = None,
    level_power: float | None = None,
) -> dict[str, float]:
    """Fine-tune ``predictor`` in place with pinball loss; deterministic for ``seed``.
    With a median head, the loss is that of the served quantiles (q0.5 the head's, weighted
    with ``MEDIAN_LEVEL_POWER``) and the head is trained with the LSTM.

    samples_per_epoch: windows drawn per epoch (default: all training windows).
    val_fraction: share of windows held out (chosen by ``seed``) for ``val_loss``; with
        fewer than 10 windows held out, ``val_loss`` is computed on the training windows;
        with 0, no extra pass: ``val_loss`` is the last epoch's training loss.
    max_seconds: stop early after this much wall time (exploration only: the result then
        depends on the machine's speed and is no longer reproducible).
    level_power: weight each window's loss by its level (``level_weights``); 0 = off;
        None = the power the model was trained with (its ``metadata["level_power"]``, 0
        if none), so daily and live fine-tunes keep the loss of the pretraining.
    Returns {"loss": mean training loss of the last epoch, "val_loss": ..., "steps": n}.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if level_power is None:
        level_power = float(predictor.metadata.get("level_power", 0.0))
    if (
        windows.window_steps != predictor.window_steps
        or windows.horizon_steps != predictor.horizon_steps
    ):
        raise ValueError(
            f"windows are {windows.window_steps}/{windows.horizon_steps} steps, the predictor "
            f"needs {predictor.window_steps}/{predictor.horizon_steps} (window/horizon)"
        )
    rng = np.random.default_rng(seed)
    m = len(windows)
    perm = rng.permutation(m)
    n_val = int(m * val_fraction)
    if n_val >= 10:
        val_idx, train_idx = perm[:n_val], perm[n_val:]
    else:
        val_idx, train_idx = perm, perm
    module = predictor.module.to(device)
    head = predictor.median_head
    if head is not None:
        head.to(device)
    # the served median is the head's where there is one: a fine-tune trains it too
    params = list(module.parameters()) + (list(head.parameters()) if head is not None else [])
    predictor.device = device
    q = torch.tensor(predictor.quantiles, dtype=torch.float32, device=device)
    per_epoch = (
        len(train_idx) if samples_per_epoch is None else min(samples_per_epoch, len(train_idx))
    )
    steps_per_epoch = math.ceil(per_epoch / batch_size) if per_epoch else 0
    total_steps = max(1, steps_per_epoch * epochs)

    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = torch.optim.Adam(params, lr=lr)
        sched = (
            torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
            )
            if cosine
            else None
        )
        last_loss = float("nan")
        step = 0
        for epoch in range(epochs):
            module.train()
            if head is not None:
                head.train()
            order = rng.permutation(train_idx)[:per_epoch]
            total, count = 0.0, 0
            for lo in range(0, per_epoch, batch_size):
                idx = order[lo : lo + batch_size]
                live, shadow, y = windows.batch(idx)
                live = _truncate_history(live, rng, truncate_prob)
                loss = _batch_loss(predictor, live, shadow, y, q, device, level_power)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                if sched is not None:
                    sched.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
                step += 1
                if log_every and step % log_every == 0:
                    print(
                        f"epoch {epoch} step {step}/{total_steps} loss {total / count:.4f}",
                        flush=True,
                    )
                if deadline is not None and time.monotonic() > deadline:
                    break
            last_loss = total / max(count, 1)
            if deadline is not None and time.monotonic() > deadline:
                break
        module.eval()
        if head is not None:
            head.eval()
        if val_fraction > 0 or epochs == 0:
            val_loss = evaluate(
                predictor, windows, val_idx, device=device, batch_size=4 * batch_size
            )
        else:
            val_loss = last_loss
    return {"loss": last_loss, "val_loss": val_loss, "steps": float(step)}


def _losses_by_batch(
    predictor: Predictor, windows: TrainingWindows, index: np.ndarray, device: str, batch_size: int, per_window: bool
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(window indices, their loss: the batch mean, or one per window) batch by batch, in eval mode."""
    q = torch.tensor(predictor.quantiles, dtype=torch.float32, device=device)
    predictor.module.eval()
    with torch.no_grad():
        for lo in range(0, index.size, batch_size):
            idx = index[lo : lo + batch_size]
            live, shadow, y = windows.batch(idx)
            yield idx, _batch_loss(predictor, live, shadow, y, q, device, per_window=per_window)


def evaluate(
    predictor: Predictor,
    windows: TrainingWindows,
    index: np.ndarray | None = None,
    device: str = "cpu",
    batch_size: int = 1024,
) -> float:
    """Mean pinball loss (model space) over windows ``index`` (default: all)."""
    idx_all = np.arange(len(windows)) if index is None else np.asarray(index)
    if idx_all.size == 0:
        return float("nan")
    total = sum(
        float(loss) * len(idx)
        for idx, loss in _losses_by_batch(predictor, windows, idx_all, device, batch_size, per_window=False)
    )
    return total / idx_all.size


def window_losses(
    predictor: Predictor,
    windows: TrainingWindows,
    device: str = "cpu",
    batch_size: int = 1024,
) -> np.ndarray:
    """Mean pinball loss (model space) of each window, shape (M,) float64: what a paired
    comparison of two models on the same windows needs (``prae.model.promotion``)."""
    out = np.empty(len(windows), np.float64)
    every = np.arange(len(windows))
    for idx, loss in _losses_by_batch(predictor, windows, every, device, batch_size, per_window=True):
        out[idx] = loss.cpu().numpy()
    return out
