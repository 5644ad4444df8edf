"""Checkpoint files: one torch file holding the config, the weights and a metadata dict.

Layout (``torch.save`` of a plain dict, loadable with ``weights_only=True``)::

    {"format": "prae-forecaster", "format_version": 1,
     "config": ModelConfig.to_dict(), "state_dict": {...}, "metadata": {...}}
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from prae.errors import CheckpointError
from prae.model.module import ModelConfig, QuantileLSTM
from prae.resources import QUANTILES

FORMAT = "prae-forecaster"
FORMAT_VERSION = 1
_FIX = (
    "point the predictor at a checkpoint written by Predictor.save(), or rebuild the "
    "shipped one with `python -m train.pretrain --out prae/checkpoints/pretrained.pt`"
)


def save_checkpoint(
    path: str | os.PathLike[str],
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        # plain JSON types only, so ``torch.load(weights_only=True)`` can read it back
        "metadata": json.loads(json.dumps(dict(metadata or {}), default=str)),
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


def load_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
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
    state = blob.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint has no weights. Fix: {_FIX}")
    expected = QuantileLSTM(config).state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: weights do not fit the model (missing {missing}, unexpected {extra}). "
            f"Fix: {_FIX}"
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path}: weight {k} has shape {tuple(state[k].shape)}, the config needs "
                f"{tuple(v.shape)}. Fix: {_FIX}"
            )
    return config, state, dict(blob.get("metadata") or {})
