"""Pretrain the shipped forecaster on the real traces in ../shared/traces.

    python -m train.pretrain --out prae/checkpoints/pretrained.pt

Data: Bitbrains Rnd 2013-07 VMs whose number is NOT a multiple of 5 (400 VMs; the 100
multiples of 5 are held out for ``prae backtest`` evaluation), plus the Alibaba 2018
machine-usage sample and the Google 2019 instance-usage tasks. All on a 300-s grid.
Then the median head (``train.median_head``; ``--no-median-head`` skips it).
Deterministic for ``--seed`` on a given torch version and thread count; the CPU kernels are
pinned to AVX2 (``train.determinism``) so that any x86-64 machine writes the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from prae.cli import report_errors
from prae.errors import TraceFormatError
from prae.model.module import ModelConfig
from prae.model.predictor import Predictor
from prae.model.training import TrainingWindows, concat_windows, evaluate, fit, windows_from_series
from prae.traces import load_trace
from prae.traces.series import Series
from train.determinism import add_kernels_option, kernels_text, pin_cpu_kernels

DEFAULT_TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"


def bitbrains_vm_number(series_id: str) -> int | None:
    """The VM number of a Bitbrains series id (``bitbrains:17`` -> 17); None for others."""
    source, _, stem = series_id.partition(":")
    return int(stem) if source == "bitbrains" and stem.isdigit() else None


def is_heldout_bitbrains(series_id: str) -> bool:
    """Held-out rule: Bitbrains VM numbers that are multiples of 5 (5, 10, ..., 500)."""
    vm = bitbrains_vm_number(series_id)
    return vm is not None and vm % 5 == 0


def trace_folder(traces: Path, name: str) -> Path:
    """``traces/name``, or an error that names this command's option (the trace readers'
    own errors name ``prae backtest``'s ``--trace``)."""
    folder = traces / name
    if not folder.exists():
        raise TraceFormatError(
            f"{folder}: no such folder. Fix: pass --traces the folder that holds {name}/"
            f" (the shared traces, {DEFAULT_TRACES})"
        )
    return folder


def load_training_series(traces: Path, step_s: float, with_others: bool) -> dict[str, list[Series]]:
    out: dict[str, list[Series]] = {}
    bb = load_trace(trace_folder(traces, "bitbrains-rnd-2013-07"), "bitbrains", step_s=step_s)
    out["bitbrains"] = [s for s in bb if not is_heldout_bitbrains(s.series_id)]
    if with_others:
        out["alibaba"] = load_trace(
            trace_folder(traces, "alibaba2018-machine-usage-sample"), "alibaba", step_s=step_s
        )
        out["google"] = load_trace(trace_folder(traces, "google2019-instance-usage"), "google", step_s=step_s)
    return out


def build_windows(series: list[Series], config: ModelConfig) -> TrainingWindows:
    items = [
        windows_from_series(s.values, None, config.window_steps, config.horizon_steps)
        for s in series
        if len(s) >= config.window_steps + config.horizon_steps
    ]
    return concat_windows(items)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="prae/checkpoints/pretrained.pt")
    ap.add_argument(
        "--traces", default=str(DEFAULT_TRACES), help="folder holding the shared traces"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--samples-per-epoch", type=int, default=480_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--window-steps", type=int, default=48)
    ap.add_argument("--horizon-steps", type=int, default=12)
    ap.add_argument("--hidden-size", type=int, default=64)
    ap.add_argument("--num-layers", type=int, default=1)
    ap.add_argument("--target-space", default="linear", choices=("linear", "log1p"))
    ap.add_argument("--step-s", type=float, default=300.0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (fixed for determinism)")
    ap.add_argument("--bitbrains-only", action="store_true")
    ap.add_argument(
        "--level-power",
        type=float,
        default=1.0,
        help="weight each window's loss by (window mean / batch mean) ** p (0 = off; "
        "prae.model.training.level_weights)",
    )
    ap.add_argument(
        "--no-median-head",
        action="store_true",
        help="ship the LSTM's own q0.5 (skip train.median_head)",
    )
    add_kernels_option(ap)
    ap.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="stop training early (exploration only; breaks reproducibility)",
    )
    args = ap.parse_args(argv)
    pin_cpu_kernels("train.pretrain", argv, native=args.native_kernels)

    torch.set_num_threads(args.threads)
    t0 = time.time()
    traces = Path(args.traces)
    data = load_training_series(traces, args.step_s, not args.bitbrains_only)
    config = ModelConfig(
        window_steps=args.window_steps,
        horizon_steps=args.horizon_steps,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        target_space=args.target_space,
    )
    windows = build_windows([s for ss in data.values() for s in ss], config)
    t_load = time.time() - t0
    print(
        f"loaded {sum(len(v) for v in data.values())} series, {len(windows)} windows in {t_load:.0f}s",
        flush=True,
    )

    predictor = Predictor.create(config, seed=args.seed)
    metrics = fit(
        predictor,
        windows,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        batch_size=args.batch_size,
        samples_per_epoch=args.samples_per_epoch,
        cosine=True,
        log_every=200,
        max_seconds=args.time_budget_s,
        level_power=args.level_power,
    )
    # held-out Bitbrains VMs: the same loss on series the model never saw
    heldout = [
        s
        for s in load_trace(trace_folder(traces, "bitbrains-rnd-2013-07"), "bitbrains", step_s=args.step_s)
        if is_heldout_bitbrains(s.series_id)
    ]
    hw = build_windows(heldout, config)
    sel = np.random.default_rng(args.seed).permutation(len(hw))[:50_000]
    metrics["heldout_loss"] = evaluate(predictor, hw, np.sort(sel))
    head_metrics = None
    if not args.no_median_head:
        from train.median_head import train_median_head

        head_metrics = train_median_head(
            predictor, [s for ss in data.values() for s in ss], seed=args.seed
        )
    wall = time.time() - t0
    meta = {
        "command": "python -m train.pretrain "
        + " ".join(argv if argv is not None else os.sys.argv[1:]),
        "data": {k: len(v) for k, v in data.items()},
        "heldout_rule": "bitbrains VM number % 5 == 0",
        "windows": len(windows),
        "metrics": metrics,
        "wall_s": round(wall, 1),
        "seed": args.seed,
        "torch": str(torch.__version__),
        "threads": args.threads,
        "cpu_kernels": kernels_text(),
        "step_s": args.step_s,
        # fine-tunes of this checkpoint (daily in the backtest, Ray Train live) use the same loss
        "level_power": args.level_power,
    }
    if head_metrics is not None:
        meta["median_head"] = head_metrics
    predictor.save(args.out, metadata=meta)
    print(json.dumps({**meta, "version": Predictor.load(args.out).version}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(report_errors(main))
