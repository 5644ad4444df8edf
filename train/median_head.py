"""Train the median head (``prae.model.median_head``) and put it into a checkpoint.

    python -m train.median_head --checkpoint prae/checkpoints/pretrained.pt

Reads the checkpoint, trains a head for its window and horizon on the same training
series as ``train.pretrain`` (Bitbrains VMs not held out, Alibaba, Google), keeps each
resource's best epoch on 40 of those Bitbrains VMs (numbers 251..300; the head does not
train on them), and writes the checkpoint back with the head (the LSTM's weights are
unchanged). ``train.pretrain`` runs the same training at its end. Deterministic for
``--seed`` on a given torch build and thread count, with the CPU kernels pinned to AVX2
(``train.determinism``): run on the shipped checkpoint it writes the shipped head bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from prae.cli import report_errors
from prae.model.median_fit import fit_median_head
from prae.model.median_head import MedianHead, MedianHeadConfig
from prae.model.predictor import Predictor
from prae.model.training import TrainingWindows, concat_windows, windows_from_series
from prae.traces.series import Series
from train.determinism import add_kernels_option, kernels_text, pin_cpu_kernels
from train.pretrain import DEFAULT_TRACES, bitbrains_vm_number, load_training_series

VALIDATION_VMS = range(251, 301)  # Bitbrains training VMs the head picks its epochs on


def is_validation_series(series_id: str) -> bool:
    return bitbrains_vm_number(series_id) in VALIDATION_VMS


def padded_windows(
    series: list[Series], window_steps: int, horizon_steps: int, stride: int
) -> TrainingWindows:
    """Every ``stride``-th window of each series, from its first observed step on: the
    series is left-padded with ``window_steps - 1`` missing rows, as a workload's first
    minutes reach the predictor (``fit_length``)."""
    items = []
    for s in series:
        values = np.asarray(s.values, dtype=np.float32)
        pad = np.full((window_steps - 1, values.shape[1]), np.nan, np.float32)
        items.append(
            windows_from_series(np.vstack([pad, values]), None, window_steps, horizon_steps, stride)
        )
    return concat_windows(items)


def train_median_head(
    predictor: Predictor,
    series: list[Series],
    seed: int = 0,
    epochs: int = 8,
    stride: int = 2,
    batch_size: int = 4096,
    log: Callable[[str], object] | None = print,
) -> dict[str, object]:
    """Fit a head for ``predictor`` and attach it; returns the metrics."""
    fit_series = [s for s in series if not is_validation_series(s.series_id)]
    val_series = [s for s in series if is_validation_series(s.series_id)]
    if not val_series:
        raise ValueError(f"no validation series: Bitbrains VMs {VALIDATION_VMS} are missing")
    w, h = predictor.window_steps, predictor.horizon_steps
    windows = padded_windows(fit_series, w, h, stride)
    validation = padded_windows(val_series, w, h, 3)
    with torch.random.fork_rng(devices=[]):  # the same head whatever ran before (pretrain)
        torch.manual_seed(seed)
        head = MedianHead(MedianHeadConfig(window_steps=w, horizon_steps=h))
        metrics = fit_median_head(
            head, windows, validation, epochs=epochs, batch_size=batch_size, seed=seed, log=log
        )
    predictor.set_median_head(head)
    return {
        **metrics,
        "fit_series": len(fit_series),
        "validation_series": len(val_series),
        "stride": stride,
        "parameters": sum(p.numel() for p in head.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--checkpoint", default="prae/checkpoints/pretrained.pt")
    ap.add_argument("--out", default=None, help="where to write (default: --checkpoint)")
    ap.add_argument("--traces", default=str(DEFAULT_TRACES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--stride", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (fixed for determinism)")
    add_kernels_option(ap)
    args = ap.parse_args(argv)
    pin_cpu_kernels("train.median_head", argv, native=args.native_kernels)

    torch.set_num_threads(args.threads)
    t0 = time.time()
    predictor = Predictor.load(args.checkpoint)
    step_s = float(predictor.metadata.get("step_s", 300.0))
    data = load_training_series(Path(args.traces), step_s, with_others=True)
    metrics = train_median_head(
        predictor,
        [s for ss in data.values() for s in ss],
        seed=args.seed,
        epochs=args.epochs,
        stride=args.stride,
    )
    command = "python -m train.median_head " + " ".join(
        argv if argv is not None else os.sys.argv[1:]
    )
    wall = round(time.time() - t0, 1)
    meta = {"median_head": {**metrics, "command": command, "wall_s": wall, "cpu_kernels": kernels_text()}}
    out = args.out or args.checkpoint
    predictor.save(out, metadata=meta)
    print(json.dumps({**meta, "version": Predictor.load(out).version}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(report_errors(main))
