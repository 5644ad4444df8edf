"""The predictor the live engine (via Serve) and ``prae backtest`` share: one code path."""

from __future__ import annotations

import hashlib
import os
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prae.model.checkpoint import load_checkpoint, save_checkpoint
from prae.model.features import build_features, fit_length, from_model_space
from prae.model.median_head import MedianHead
from prae.model.module import ModelConfig, QuantileLSTM

BUILTIN_CHECKPOINT = "pretrained.pt"
_CHUNK = 8192  # windows per forward pass: bounds memory for B in the tens of thousands


def builtin_checkpoint_path() -> Path:
    """Path of the checkpoint shipped inside the package (prae/checkpoints/pretrained.pt)."""
    return Path(str(importlib_resources.files("prae") / "checkpoints" / BUILTIN_CHECKPOINT))


class Predictor:
    """Quantile forecasts in raw units from raw telemetry windows.

    Attributes: ``window_steps`` (history length trained on), ``horizon_steps`` (steps
    emitted), ``quantiles`` (== prae.resources.QUANTILES), ``version`` (short hash of
    the weights and config; changes whenever the weights change), ``metadata``.

    With a ``median_head`` (``prae.model.median_head``) the served q0.5 is the head's,
    the other quantiles the LSTM's (re-sorted, so they stay monotone). Fine-tuning
    (``training.fit``) trains both, and the champion/challenger losses (``window_losses``)
    score the quantiles as served; ``save`` writes both.
    """

    def __init__(
        self,
        module: QuantileLSTM,
        device: str = "cpu",
        metadata: dict[str, Any] | None = None,
        median_head: MedianHead | None = None,
    ) -> None:
        self._module = module.to(device)
        self._module.eval()
        self.device = device
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._median_head: MedianHead | None = None
        if median_head is not None:
            self.set_median_head(median_head)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls, config: ModelConfig | None = None, seed: int = 0, device: str = "cpu"
    ) -> Predictor:
        """A fresh, untrained predictor (deterministic initial weights for ``seed``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = QuantileLSTM(config or ModelConfig())
        return cls(module, device=device)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> Predictor:
        """Load a checkpoint; CheckpointError on missing/corrupt/wrong shape (says the fix)."""
        contents = load_checkpoint(path)
        module = QuantileLSTM(contents.config)
        module.load_state_dict(contents.state)
        head = None
        if contents.median_head_config is not None and contents.median_head_state is not None:
            head = MedianHead(contents.median_head_config)
            head.load_state_dict(contents.median_head_state)
        return cls(module, device=device, metadata=contents.metadata, median_head=head)

    @classmethod
    def builtin(cls, device: str = "cpu") -> Predictor:
        """The pretrained model shipped with PRAE."""
        return cls.load(builtin_checkpoint_path(), device=device)

    def save(self, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
        """Write a checkpoint atomically (temporary file + rename)."""
        meta = {**self.metadata, **(metadata or {})}
        save_checkpoint(path, self.config, self._module.state_dict(), meta, self._median_head)

    def set_median_head(self, head: MedianHead | None) -> None:
        """Serve ``head``'s median as q0.5 from now on (None: the LSTM's own again)."""
        if head is not None:
            if not head.config.fits(self.config):
                raise ValueError(f"median head {head.config} does not match the LSTM's {self.config}")
            head = head.to(self.device).eval()
        self._median_head = head

    # ------------------------------------------------------------------ properties
    @property
    def module(self) -> QuantileLSTM:
        return self._module

    @property
    def median_head(self) -> MedianHead | None:
        return self._median_head

    @property
    def config(self) -> ModelConfig:
        return self._module.config

    @property
    def window_steps(self) -> int:
        return self.config.window_steps

    @property
    def horizon_steps(self) -> int:
        return self.config.horizon_steps

    @property
    def quantiles(self) -> tuple[float, ...]:
        return tuple(self.config.quantiles)

    @property
    def version(self) -> str:
        h = hashlib.sha256(repr(sorted(self.config.to_dict().items())).encode())
        for k, v in self._module.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        if self._median_head is not None:  # a predictor without one keeps its old version
            h.update(repr(sorted(self._median_head.config.to_dict().items())).encode())
            for k, v in self._median_head.state_dict().items():
                h.update(f"median_head.{k}".encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:12]

    # ------------------------------------------------------------------ inference
    def predict(self, live: np.ndarray, shadow: np.ndarray | None = None) -> np.ndarray:
        """Quantile forecasts for a batch of workloads.

        live: shape (B, T, 4) raw units in RESOURCES order; NaN = missing; T may differ
            from window_steps (left-padded with NaN / truncated to the last steps).
        shadow: shape (B, T, 4) or None; rows without a shadow are all-NaN. Already
            progress-aligned by the caller.
        returns: shape (B, horizon_steps, 4, len(quantiles)) float32 raw units, >= 0,
            non-decreasing along the quantile axis. A resource never observed in a
            window is forecast as 0. With a median head, q0.5 is the head's median.
        """
        live = np.asarray(live, dtype=np.float32)
        if live.ndim != 3 or live.shape[2] != self.config.n_resources:
            raise ValueError(
                f"live must have shape (B, T, {self.config.n_resources}), got {live.shape}"
            )
        if shadow is not None:
            shadow = np.asarray(shadow, dtype=np.float32)
            if shadow.shape != live.shape:
                raise ValueError(f"shadow shape {shadow.shape} must equal live shape {live.shape}")
            if np.isnan(shadow).all():
                shadow = None
        w = self.window_steps
        live = fit_length(live, w)
        shadow = fit_length(shadow, w) if shadow is not None else None
        b = live.shape[0]
        out = np.empty(
            (b, self.horizon_steps, self.config.n_resources, len(self.quantiles)), np.float32
        )
        self._module.eval()
        i50 = self.quantiles.index(0.5)
        with torch.no_grad():
            for lo in range(0, b, _CHUNK):
                hi = min(b, lo + _CHUNK)
                x = torch.from_numpy(np.ascontiguousarray(live[lo:hi])).to(self.device)
                s = (
                    torch.from_numpy(np.ascontiguousarray(shadow[lo:hi])).to(self.device)
                    if shadow is not None
                    else None
                )
                out[lo:hi] = self._forward_raw(x, s).cpu().numpy()
                if self._median_head is not None:
                    median = self._median_head(x).cpu().numpy()
                    lstm = out[lo:hi, ..., i50]
                    out[lo:hi, ..., i50] = np.where(np.isnan(median), lstm, median)
        if self._median_head is not None:
            out.sort(axis=-1)  # the head's median may fall outside the LSTM's q0.1..q0.9
        return out

    def _forward_raw(self, live: torch.Tensor, shadow: torch.Tensor | None) -> torch.Tensor:
        """(B, W, R) raw -> (B, H, R, Q) raw-unit quantiles (graph kept for training)."""
        features, scale, present, last = build_features(live, shadow)
        z = self._module(features, last)
        y = from_model_space(z, scale, self.config.target_space)
        return torch.where(present[:, None, :, None], y, torch.zeros_like(y))
