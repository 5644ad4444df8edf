"""The network: a quantile LSTM over scale-free telemetry windows. Only the nn.Module."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from prae.model.features import N_FEATURES, N_RESOURCES, TARGET_SPACES, ratio_to_model_space
from prae.resources import QUANTILES


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a forecaster; stored in every checkpoint."""

    window_steps: int = 48
    horizon_steps: int = 12
    hidden_size: int = 64
    num_layers: int = 1
    n_features: int = N_FEATURES
    n_resources: int = N_RESOURCES
    quantiles: tuple[float, ...] = QUANTILES
    target_space: str = "linear"  # see features.py; checkpoints before this field were log1p

    def __post_init__(self) -> None:
        if self.target_space not in TARGET_SPACES:
            raise ValueError(
                f"target_space must be one of {TARGET_SPACES}, got {self.target_space!r}"
            )

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["quantiles"] = list(self.quantiles)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ModelConfig:
        kw = dict(d)
        kw["quantiles"] = tuple(float(q) for q in kw["quantiles"])  # type: ignore[union-attr]
        kw.setdefault("target_space", "log1p")
        return cls(**kw)  # type: ignore[arg-type]


class QuantileLSTM(nn.Module):
    """LSTM encoder + MLP head emitting monotone quantiles for every horizon step.

    forward(features, last):
        features: shape (B, T, n_features), from ``features.build_features``
        last:     shape (B, R), last observed live value / scale
        returns:  shape (B, H, R, Q) model-space quantiles, non-decreasing along Q.

    Quantiles are ``anchor + base + cumsum(softplus(increments))``: monotone by
    construction, and the anchor makes "stay where you are" the zero-weight answer.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.lstm = nn.LSTM(
            input_size=c.n_features,
            hidden_size=c.hidden_size,
            num_layers=c.num_layers,
            batch_first=True,
        )
        n_out = c.horizon_steps * c.n_resources * len(c.quantiles)
        self.head = nn.Sequential(
            nn.Linear(c.hidden_size + c.n_features, 2 * c.hidden_size),
            nn.GELU(),
            nn.Linear(2 * c.hidden_size, n_out),
        )

    def forward(self, features: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        c = self.config
        anchor = ratio_to_model_space(last, c.target_space)
        out, _ = self.lstm(features)
        h = torch.cat([out[:, -1], features[:, -1]], dim=-1)
        raw = self.head(h).view(-1, c.horizon_steps, c.n_resources, len(c.quantiles))
        steps = F.softplus(raw[..., 1:])
        q = torch.cat([raw[..., :1], raw[..., :1] + torch.cumsum(steps, dim=-1)], dim=-1)
        return q + anchor[:, None, :, None]
