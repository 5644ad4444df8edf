"""The median head: a point forecast of the median, per resource, from summary statistics
of the window. Only the nn.Module and its inputs; training is in ``median_fit``.

Why a second network: the LSTM is trained for five quantiles at once with level-weighted
pinball loss, and its q0.5 on CPU is no better than the last value (0.99x its WAPE on the
held-out Bitbrains VMs). A small MLP that forecasts the *change from the last value*,
from statistics of the last 48 steps normalised by their mean and trained with L1 loss
weighted by sqrt(level), beat the last value on those VMs (0.93x in the backtest; see
the model card). Its output replaces the LSTM's q0.5; the other quantiles stay the
LSTM's, and calibration, the median choice and the tails work on them as before.

Inputs per window and resource (``feature_names``), all but the last three divided by the
window's scale (mean of the forward-filled window): the values at lags 0..W-1, means of
the last 3/6/12/24/48 steps, medians of the last 3/6/12/48, max and min of the last
6/12/48, the standard deviation of the last 12, EWMAs with alpha 0.5 and 0.2; then the
observed share of the last 12 steps, log(scale) and (mean / scale, 1 or 0). Missing steps
are forward-filled inside the window; steps before the first observation take its value.
A resource never observed in the window gets NaN (the caller keeps the LSTM's q0.5).

Output: ``lag0 + mlp(standardised inputs)`` in scale units, clamped at 0, times scale;
the last layer starts at zero, so an untrained head is the last value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from prae.model.features import N_RESOURCES

if TYPE_CHECKING:
    from prae.model.module import ModelConfig

MEAN_SPANS: tuple[int, ...] = (3, 6, 12, 24, 48)
MEDIAN_SPANS: tuple[int, ...] = (3, 6, 12, 48)
EXTREME_SPANS: tuple[int, ...] = (6, 12, 48)
STD_SPAN = 12
EWMA_ALPHAS: tuple[float, ...] = (0.5, 0.2)
FEATURE_CLIP = 100.0  # a burst of 10 000x the window mean must not blow up the MLP's input
# Its loss weights each window by (window mean / batch mean) ** this (``level_weights``), in
# pretraining and in every fine-tune: 0.5 beat 0.3 and 0.7 on the validation VMs; 1 (the
# LSTM's) collapsed it to the last value.
MEDIAN_LEVEL_POWER = 0.5


@dataclass(frozen=True)
class MedianHeadConfig:
    """Shape of a median head; stored in the checkpoint next to the LSTM's ModelConfig."""

    window_steps: int = 48
    horizon_steps: int = 12
    hidden_size: int = 128
    n_resources: int = N_RESOURCES

    def __post_init__(self) -> None:
        if self.window_steps < max(MEAN_SPANS + MEDIAN_SPANS + EXTREME_SPANS + (STD_SPAN,)):
            raise ValueError(f"window_steps must be at least 48, got {self.window_steps}")
        if self.horizon_steps < 1 or self.hidden_size < 1 or self.n_resources < 1:
            raise ValueError(f"horizon_steps, hidden_size and n_resources must be >= 1: {self}")

    def fits(self, model: ModelConfig) -> bool:
        """Whether this head can serve next to an LSTM of ``model``'s shape."""
        return (self.window_steps, self.horizon_steps, self.n_resources) == (
            model.window_steps,
            model.horizon_steps,
            model.n_resources,
        )

    @property
    def n_inputs(self) -> int:
        return len(feature_names(self.window_steps))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> MedianHeadConfig:
        return cls(**{k: int(v) for k, v in d.items()})  # type: ignore[call-overload]


def feature_names(window_steps: int) -> tuple[str, ...]:
    return (
        *(f"lag{k}" for k in range(window_steps)),
        *(f"mean{k}" for k in MEAN_SPANS),
        *(f"median{k}" for k in MEDIAN_SPANS),
        *(f"{f}{k}" for k in EXTREME_SPANS for f in ("max", "min")),
        f"std{STD_SPAN}",
        *(f"ewma{a}" for a in EWMA_ALPHAS),
        f"observed{STD_SPAN}",
        "log_scale",
        "has_level",
    )


def summary_features(live: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """live: (B, W, R) raw units, NaN = missing.

    Returns inputs (B, R, F) float32 (clipped, not standardised), scale (B, R) (1 where
    the window's mean is 0 or nothing was observed) and present (B, R) bool.
    """
    x = live.to(torch.float32).transpose(1, 2)  # (B, R, W)
    w = x.shape[-1]
    observed = ~torch.isnan(x)
    steps = torch.arange(w, device=x.device).expand_as(x)
    last_seen = torch.where(observed, steps, torch.full_like(steps, -1)).cummax(dim=-1).values
    first = torch.where(observed, steps, torch.full_like(steps, w)).amin(dim=-1).clamp(max=w - 1)
    source = torch.where(last_seen >= 0, last_seen, first[..., None].expand_as(last_seen))
    present = observed.any(dim=-1)
    filled = torch.gather(torch.nan_to_num(x, nan=0.0).clamp(min=0), -1, source)
    filled = torch.where(present[..., None], filled, torch.zeros_like(filled))
    mean = filled.mean(dim=-1)
    scale = torch.where(mean > 0, mean, torch.ones_like(mean))

    parts = [filled.flip(-1)]  # lag 0 (newest) first
    parts += [filled[..., -k:].mean(-1, keepdim=True) for k in MEAN_SPANS]
    for k in MEDIAN_SPANS:  # numpy's median: the mean of the middle two for an even span
        ordered = filled[..., -k:].sort(dim=-1).values
        parts.append(0.5 * (ordered[..., (k - 1) // 2] + ordered[..., k // 2])[..., None])
    for k in EXTREME_SPANS:
        parts.append(filled[..., -k:].amax(-1, keepdim=True))
        parts.append(filled[..., -k:].amin(-1, keepdim=True))
    parts.append(filled[..., -STD_SPAN:].std(-1, unbiased=False, keepdim=True))
    for a in EWMA_ALPHAS:
        weights = a * (1 - a) ** torch.arange(w - 1, -1, -1, dtype=torch.float32, device=x.device)
        weights[0] = (1 - a) ** (w - 1)  # the oldest step carries the EWMA's starting value
        parts.append((filled * weights).sum(-1, keepdim=True))
    scaled = torch.cat(parts, dim=-1) / scale[..., None]
    extra = torch.stack(
        [observed[..., -STD_SPAN:].float().mean(-1), torch.log(scale), mean / scale], dim=-1
    )
    inputs = torch.cat([scaled, extra], dim=-1).clamp(-FEATURE_CLIP, FEATURE_CLIP)
    return inputs, scale, present


class MedianHead(nn.Module):
    """One MLP per resource (inputs -> hidden -> hidden -> horizon, GELU), standardised inputs.

    ``mu``/``sd`` (R, F) are buffers set from the training data (``median_fit``).
    """

    def __init__(self, config: MedianHeadConfig | None = None) -> None:
        super().__init__()
        self.config = config or MedianHeadConfig()
        c = self.config
        self.mlps = nn.ModuleList(
            nn.Sequential(
                nn.Linear(c.n_inputs, c.hidden_size),
                nn.GELU(),
                nn.Linear(c.hidden_size, c.hidden_size),
                nn.GELU(),
                nn.Linear(c.hidden_size, c.horizon_steps),
            )
            for _ in range(c.n_resources)
        )
        for mlp in self.mlps:
            nn.init.zeros_(mlp[-1].weight)
            nn.init.zeros_(mlp[-1].bias)
        self.register_buffer("mu", torch.zeros(c.n_resources, c.n_inputs))
        self.register_buffer("sd", torch.ones(c.n_resources, c.n_inputs))

    def scaled_median(self, inputs: torch.Tensor, resource: int) -> torch.Tensor:
        """inputs (N, F) of one resource, unstandardised -> (N, H) median / scale (graph kept)."""
        z = (inputs - self.mu[resource]) / self.sd[resource]
        return inputs[:, :1] + self.mlps[resource](z)  # inputs[:, 0] is lag 0 / scale

    def scaled_medians(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs (B, R, F) from ``summary_features`` -> (B, H, R) median / scale (graph kept)."""
        return torch.stack(
            [self.scaled_median(inputs[:, r], r) for r in range(self.config.n_resources)], dim=-1
        )

    @torch.no_grad()
    def forward(self, live: torch.Tensor) -> torch.Tensor:
        """live (B, W, R) raw -> (B, H, R) median in raw units, >= 0; NaN where unobserved.
        Inference only (training goes through ``scaled_median(s)``)."""
        inputs, scale, present = summary_features(live)
        out = self.scaled_medians(inputs).clamp(min=0) * scale[:, None, :]
        return torch.where(present[:, None, :], out, torch.full_like(out, float("nan")))
