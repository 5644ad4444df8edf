"""Raw telemetry windows -> scale-free model inputs, and back.

Every window is normalised by its own per-resource scale (the mean of the observed
values in the window), so the same weights serve a 2-core VM and a 64-core job, bytes and
cores, 1-second live steps and 300-second trace steps. Inputs are ``log1p(x / scale)``
(bursts of 100x the mean stay in range). Targets live in "model space", chosen per
checkpoint (``ModelConfig.target_space``): ``linear`` ``z = y / scale`` (the default:
pinball loss there is proportional to pinball loss in raw units, so a tail that
overshoots by 30 cores costs what it costs the cluster) or ``log1p``
``z = log1p(y / scale)``. Both maps are monotone, so quantiles map back exactly.

Per-step feature layout (``N_FEATURES`` = 17), in this order:

    0..3    live value, log1p(x / scale), 0 where missing        (RESOURCES order)
    4..7    live observed flag (1 / 0)
    8..11   shadow value, log1p(s / shadow_scale), 0 where missing
    12      shadow present flag (1 where any shadow resource is observed at that step)
    13..16  window profile: log1p(coefficient of variation) per resource (constant in t)

A model pretrained on traces (no shadow: columns 8..12 are zero) can be fine-tuned later
on live data with a shadow without changing the layout.
"""

from __future__ import annotations

import numpy as np
import torch

from prae.resources import RESOURCES

N_RESOURCES = len(RESOURCES)
N_FEATURES = 4 * N_RESOURCES + 1
FEATURE_NAMES: tuple[str, ...] = (
    *(f"live_{r}" for r in RESOURCES),
    *(f"live_{r}_observed" for r in RESOURCES),
    *(f"shadow_{r}" for r in RESOURCES),
    "shadow_present",
    *(f"profile_{r}_cv" for r in RESOURCES),
)
assert len(FEATURE_NAMES) == N_FEATURES


def fit_length(x: np.ndarray, steps: int) -> np.ndarray:
    """Left-pad with NaN or keep the last ``steps`` steps.

    x: shape (B, T, R) -> shape (B, steps, R), float32.
    """
    x = np.asarray(x, dtype=np.float32)
    t = x.shape[1]
    if t == steps:
        return x
    if t > steps:
        return x[:, t - steps :]
    pad = np.full((x.shape[0], steps - t, x.shape[2]), np.nan, dtype=np.float32)
    return np.concatenate([pad, x], axis=1)


def _scale(x: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window, per-resource mean of observed |x|.

    x, observed: shape (B, T, R) -> scale (B, R) (1.0 where nothing positive was
    observed) and present (B, R) bool (at least one observation).
    """
    count = observed.sum(dim=1)
    total = torch.where(observed, x.abs(), torch.zeros_like(x)).sum(dim=1)
    present = count > 0
    mean = total / count.clamp(min=1)
    scale = torch.where(mean > 0, mean, torch.ones_like(mean))
    return scale, present


def build_features(
    live: torch.Tensor, shadow: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model inputs for a batch of windows.

    live: shape (B, T, R) raw units, NaN = missing. shadow: shape (B, T, R) or None.
    Returns features (B, T, N_FEATURES), scale (B, R), present (B, R) bool, and
    last (B, R): the last observed live value divided by scale (0 if none).
    """
    observed = ~torch.isnan(live)
    x = torch.where(observed, live.clamp(min=0), torch.zeros_like(live))
    scale, present = _scale(x, observed)
    z = torch.log1p(x / scale[:, None, :])
    z = torch.where(observed, z, torch.zeros_like(z))
    obs_f = observed.to(live.dtype)

    n = obs_f.sum(dim=1).clamp(min=1)
    raw_mean = (x * obs_f).sum(dim=1) / n
    raw_var = (((x - raw_mean[:, None, :]) * obs_f) ** 2).sum(dim=1) / n
    cv = torch.where(
        raw_mean > 0, raw_var.sqrt() / raw_mean.clamp(min=1e-30), torch.zeros_like(raw_mean)
    )
    profile = torch.log1p(cv.clamp(max=1e3))

    if shadow is None:
        sz = torch.zeros_like(z)
        s_flag = torch.zeros_like(z[..., :1])
    else:
        s_obs = ~torch.isnan(shadow)
        s = torch.where(s_obs, shadow.clamp(min=0), torch.zeros_like(shadow))
        s_scale, _ = _scale(s, s_obs)
        sz = torch.where(s_obs, torch.log1p(s / s_scale[:, None, :]), torch.zeros_like(s))
        s_flag = s_obs.any(dim=-1, keepdim=True).to(live.dtype)

    t = live.shape[1]
    idx = torch.arange(t, device=live.device)[None, :, None].expand_as(observed)
    last = torch.where(observed, idx, torch.full_like(idx, -1)).amax(dim=1)  # (B, R)
    ratio = torch.gather(x, 1, last.clamp(min=0)[:, None, :]).squeeze(1) / scale
    ratio = torch.where(last >= 0, ratio, torch.zeros_like(ratio))

    features = torch.cat([z, obs_f, sz, s_flag, profile[:, None, :].expand(-1, t, -1)], dim=-1)
    return features, scale, present, ratio


TARGET_SPACES: tuple[str, ...] = ("linear", "log1p")


def ratio_to_model_space(ratio: torch.Tensor, space: str) -> torch.Tensor:
    """y / scale -> model space (any shape)."""
    return ratio if space == "linear" else torch.log1p(ratio)


MAX_TARGET_RATIO = 100.0  # training targets above 100x the window mean are clipped to it


def to_model_space(y: torch.Tensor, scale: torch.Tensor, space: str = "linear") -> torch.Tensor:
    """Raw targets -> model space (training). y: (B, H, R), scale: (B, R) -> (B, H, R).

    NaN kept. Ratios are clipped at MAX_TARGET_RATIO: a burst of 10 000x the mean of a
    near-idle window is not forecastable, and in linear space it would dominate the loss.
    """
    ratio = (y.clamp(min=0) / scale[:, None, :]).clamp(max=MAX_TARGET_RATIO)
    return ratio_to_model_space(ratio, space)


def from_model_space(z: torch.Tensor, scale: torch.Tensor, space: str = "linear") -> torch.Tensor:
    """Model-space quantiles -> raw units, >= 0. z: (B, H, R, Q), scale: (B, R)."""
    z = z.clamp(min=0)
    ratio = z if space == "linear" else torch.expm1(z.clamp(max=30.0))
    return ratio * scale[:, None, :, None]
