"""Checkpoint files: one torch file holding the config, the weights and a metadata dict.

Layout (``torch.save`` of a plain dict, loadable with ``weights_only=True``)::

    {"format": "prae-forecaster", "format_version": 1,
     "config": ModelConfig.to_dict(), "state_dict": {...}, "metadata": {...},
     "median_head": {"config": MedianHeadConfig.to_dict(), "state_dict": {...}}}

``median_head`` is optional (checkpoints written before it have none; a predictor
without one serves the LSTM's q0.5), so the format version did not change.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prae.errors import CheckpointError
from prae.model.median_head import MedianHead, MedianHeadConfig
from prae.model.module import ModelConfig, QuantileLSTM
from prae.resources import QUANTILES

FORMAT = "prae-forecaster"
FORMAT_VERSION = 1
_FIX = (
    "point the predictor at a checkpoint written by Predictor.save(), or rebuild the "
    "shipped one with `python -m train.pretrain --out prae/checkpoints/pretrained.pt`"
)


@dataclass(frozen=True)
class CheckpointContents:
    """What a checkpoint holds, validated: the LSTM's config and weights, the metadata,
    and the median head's config and weights (both None when it has none)."""

    config: ModelConfig
    state: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    median_head_config: MedianHeadConfig | None = None
    median_head_state: dict[str, torch.Tensor] | None = None


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def save_checkpoint(
    path: str | os.PathLike[str],
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None = None,
    median_head: MedianHead | None = None,
) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "state_dict": _cpu_copy(state_dict),
        # plain JSON types only, so ``torch.load(weights_only=True)`` can read it back
        "metadata": json.loads(json.dumps(dict(metadata or {}), default=str)),
    }
    if median_head is not None:
        blob["median_head"] = {
            "config": median_head.config.to_dict(),
            "state_dict": _cpu_copy(median_head.state_dict()),
        }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_weights(
    path: Path, what: str, state: object, expected: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint has no {what} weights. Fix: {_FIX}")
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: {what} weights do not fit the model (missing {missing}, unexpected "
            f"{extra}). Fix: {_FIX}"
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path}: {what} weight {k} has shape {tuple(state[k].shape)}, the config "
                f"needs {tuple(v.shape)}. Fix: {_FIX}"
            )
    return state


def _load_median_head(
    path: Path, blob: dict[str, Any], config: ModelConfig
) -> tuple[MedianHeadConfig | None, dict[str, torch.Tensor] | None]:
    entry = blob.get("median_head")
    if entry is None:
        return None, None
    try:
        head_config = MedianHeadConfig.from_dict(entry["config"])
    except Exception as e:
        raise CheckpointError(f"{path}: invalid median head config ({e}). Fix: {_FIX}") from e
    if not head_config.fits(config):
        raise CheckpointError(
            f"{path}: the median head's window/horizon/resources {head_config} do not match "
            f"the LSTM's {config}. Fix: {_FIX}"
        )
    state = _check_weights(
        path, "median head", entry.get("state_dict"), MedianHead(head_config).state_dict()
    )
    return head_config, state


def load_checkpoint(path: str | os.PathLike[str]) -> CheckpointContents:
    """Read and validate a checkpoint; CheckpointError says what is wrong and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found. Fix: {_FIX}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt files
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e}). Fix: {_FIX}"
        ) from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a PRAE forecaster checkpoint. Fix: {_FIX}")
    if blob.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {blob.get('format_version')!r}, this PRAE "
            f"reads version {FORMAT_VERSION}. Fix: {_FIX}"
        )
    try:
        config = ModelConfig.from_dict(blob["config"])
    except Exception as e:
        raise CheckpointError(f"{path}: invalid model config ({e}). Fix: {_FIX}") from e
    if tuple(config.quantiles) != tuple(QUANTILES):
        raise CheckpointError(
            f"{path}: checkpoint emits quantiles {config.quantiles}, PRAE needs {QUANTILES}. "
            f"Fix: {_FIX}"
        )
    state = _check_weights(path, "LSTM", blob.get("state_dict"), QuantileLSTM(config).state_dict())
    head_config, head_state = _load_median_head(path, blob, config)
    return CheckpointContents(
        config, state, dict(blob.get("metadata") or {}), head_config, head_state
    )
