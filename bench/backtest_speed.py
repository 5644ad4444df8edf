"""How long ``prae backtest`` takes on the speed goal's workload, stage by stage.

    python bench/backtest_speed.py                # 100 held-out Bitbrains VMs x 30 days
    python bench/backtest_speed.py --series 20    # fewer series; totals are extrapolated

Goal: 100 Bitbrains series x 30 days x 4 resources, lead 15 min, daily retraining, within
10 minutes on the project's 2-core machine, inference batched across series. The
baseline measured in the same run is unbatched inference (one workload per predict
call, as a naive per-series loop would do it), timed on a sample of windows.
The goal table (WAPE / slack / coverage vs the best baseline) is printed as well.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from prae.backtest.output import write_outputs
from prae.backtest.runner import BacktestConfig, run_backtest
from prae.backtest.summary import format_tables, goals, score
from prae.model.predictor import Predictor
from prae.model.promotion import PromotionRule
from prae.traces import load_trace

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces" / "bitbrains-rnd-2013-07"
GOAL_S = 600.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--series", type=int, default=100)
    ap.add_argument("--trace", default=str(TRACES))
    ap.add_argument(
        "--all-vms",
        action="store_true",
        help="take the first N VMs, not the held-out ones (number %% 5 == 0)",
    )
    ap.add_argument("--out", default=None, help="also write forecasts.parquet etc. here (timed)")
    ap.add_argument("--retrain-every-s", type=float, default=86400.0)
    ap.add_argument(
        "--always-promote", action="store_true", help="use every retrained model (no champion/challenger)"
    )
    ap.add_argument(
        "--checkpoint", default=None, help="a checkpoint file to test (default: the shipped one)"
    )
    ap.add_argument(
        "--without-median-head",
        action="store_true",
        help="serve the LSTM's own q0.5 (the checkpoint's median head is set aside)",
    )
    ap.add_argument(
        "--analog-weight",
        type=float,
        default=None,
        help="the analog quantiles' share (default prae.model.combination.ANALOG_WEIGHT; 0 = off)",
    )
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    c0 = time.process_time()
    ids = None if args.all_vms else [str(i) for i in range(5, 501, 5)][: args.series]
    series = load_trace(args.trace, "bitbrains", ids=ids, limit=args.series)
    t_load = time.perf_counter() - t0
    predictor = Predictor.load(args.checkpoint) if args.checkpoint else Predictor.builtin()
    if args.without_median_head:
        predictor.set_median_head(None)
    predictor_version = predictor.version  # before the daily retraining changes it
    cfg = BacktestConfig(
        lead_s=900.0,
        retrain_every_s=args.retrain_every_s or None,
        promotion=PromotionRule(always=args.always_promote),
        **({} if args.analog_weight is None else {"analog_weight": args.analog_weight}),
    )

    t1 = time.perf_counter()
    result = run_backtest(series, predictor, cfg)
    t_run = time.perf_counter() - t1
    t2 = time.perf_counter()
    table = score(result)
    goal = goals(table)
    text = format_tables(table, goal)
    t_score = time.perf_counter() - t2
    t3 = time.perf_counter()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="prae-bench-"))
    write_outputs(result, out, table, goal, text)
    t_write = time.perf_counter() - t3
    total = time.perf_counter() - t0
    cpu_total = time.process_time() - c0

    # baseline in the same run: unbatched inference, one window per call
    rng = np.random.default_rng(0)
    windows = result.emitted()[:, :, 0].sum()
    long_enough = [s for s in series if len(s) > predictor.window_steps + 200]
    starts = rng.integers(0, 200, 200)
    sample = np.stack(
        [
            long_enough[i % len(long_enough)].values[j : j + predictor.window_steps]
            for i, j in enumerate(starts)
        ]
    ).astype(np.float32)
    tb = time.perf_counter()
    for w in sample:
        predictor.predict(w[None])
    per_window_unbatched = (time.perf_counter() - tb) / len(sample)
    tb = time.perf_counter()
    predictor.predict(np.repeat(sample, 20, axis=0))
    per_window_batched = (time.perf_counter() - tb) / (len(sample) * 20)

    n = len(series)
    days = float(np.mean([len(s) for s in series])) * series[0].step_s / 86400
    print(text)
    print()
    print(
        f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average "
        f"{os.getloadavg()[0]:.1f} at the end (other processes slow every figure down)"
    )
    print(
        f"workload: {n} Bitbrains series x {days:.1f} days x 4 resources, lead 900 s, step 300 s, "
        f"retraining every {args.retrain_every_s / 3600:g} h; {int(result.emitted().sum())} forecast rows"
    )
    head = "its median head" if predictor.median_head is not None else "the LSTM's own median"
    print(f"model: {args.checkpoint or 'shipped'} (version {predictor_version}), q0.5 from {head}")
    judged = [log for log in result.train_log if "promote" in log]
    print(
        f"retrained models promoted: {sum(bool(log['promote']) for log in judged)} of {len(judged)}"
        + ("" if args.always_promote else " (champion/challenger on each series' newest rows)")
    )
    print(
        f"stages (s): load {t_load:.1f}, "
        + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
        + f", score {t_score:.1f}, write {t_write:.1f}"
    )
    scale = 100.0 / n
    print(
        f"total {total:.1f} s  (backtest {t_run:.1f} s); extrapolated to 100 series: "
        f"{total * scale:.0f} s; goal {GOAL_S:.0f} s -> ratio {total * scale / GOAL_S:.2f}"
    )
    print(
        f"process CPU time {cpu_total:.0f} s over {total:.0f} s wall (CPU time / wall > 1 means "
        "both cores were ours; < 1 means other processes had the machine)"
    )
    print(
        f"inference: batched {per_window_batched * 1e6:.0f} us/window vs unbatched (baseline, same run) "
        f"{per_window_unbatched * 1e6:.0f} us/window -> {per_window_unbatched / per_window_batched:.0f}x; "
        f"the {int(windows)} issue steps unbatched would take {windows * per_window_unbatched:.0f} s "
        f"for inference alone"
    )
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
