"""``prae backtest``: replay a trace through the live predictor and policies, and score it.

prae backtest --trace PATH [--format auto|bitbrains|alibaba|google|generic]
              --lead-s 900 --out DIR [--violation-target 0.01] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from prae.errors import PraeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from prae.traces import FORMATS

    parser.add_argument(
        "--trace",
        required=True,
        help="trace file or folder (native formats or generic long CSV/Parquet)",
    )
    parser.add_argument(
        "--format", default="auto", choices=FORMATS, help="trace format (default: detect)"
    )
    parser.add_argument(
        "--lead-s", type=float, default=900.0, help="forecast lead in seconds (default 900)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--step-s",
        type=float,
        default=None,
        help="grid step in seconds (default: 300 for native traces, inferred for generic)",
    )
    parser.add_argument(
        "--violation-target",
        type=float,
        default=0.01,
        help="share of workload-steps allowed short (default 0.01)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpoint", default="builtin", help="checkpoint path, or 'builtin' (default)"
    )
    parser.add_argument(
        "--retrain-every-s",
        type=float,
        default=86400.0,
        help="fine-tune on past data this often (default daily; 0 = never)",
    )
    parser.add_argument("--retrain-windows", type=int, default=4096, help="windows per retraining")
    parser.add_argument("--retrain-epochs", type=int, default=1)
    parser.add_argument(
        "--always-promote",
        action="store_true",
        help="use every retrained model; default: only one that beats the model in use on "
        "each series' newest rows, held out of its training (champion/challenger)",
    )
    parser.add_argument(
        "--warmup-s", type=float, default=3600.0, help="no rows for a series' first seconds"
    )
    parser.add_argument(
        "--series", default=None, help="comma-separated series ids / file stems to keep"
    )
    parser.add_argument("--max-series", type=int, default=None, help="keep the first N series")
    parser.add_argument(
        "--tail-resources",
        default=None,
        help="resources whose levels >= q0.9 may come from their own recent changes and values "
        "(default prae.model.tails.TAIL_RESOURCES: cpu,mem,disk,net; 'none' = the model's tail for all)",
    )
    parser.add_argument(
        "--no-analog",
        action="store_true",
        help="leave out the analog point candidate and quantiles "
        "(as predictor.analog_candidate: false does live)",
    )
    parser.add_argument(
        "--analog-weight",
        type=float,
        default=None,
        help="the analog quantiles' share of the quantiles calibrated, in [0, 1] "
        "(default prae.model.combination.ANALOG_WEIGHT: 0.75; 0 = the model's alone)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    # --simulate-cluster and its options (added by the allocator/simulator owner: prae/simulate/cli.py)
    from prae.simulate.cli import add_arguments as add_simulation_arguments

    add_simulation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from prae.backtest.output import write_outputs
    from prae.backtest.plots import write_plots
    from prae.backtest.runner import BacktestConfig, run_backtest
    from prae.backtest.summary import format_tables, goals, score
    from prae.model.predictor import Predictor
    from prae.model.promotion import PromotionRule
    from prae.model.tails import TAIL_RESOURCES, tail_columns
    from prae.traces import load_trace

    t0 = time.perf_counter()
    try:
        tails = (
            TAIL_RESOURCES
            if args.tail_resources is None
            else tuple(r.strip() for r in args.tail_resources.split(",") if r.strip() not in ("", "none"))
        )
        try:
            tail_columns(tails)  # before any forecasting, and named by its flag
        except ValueError as exc:
            raise ValueError(f"--tail-resources: {exc} (comma-separated), or 'none'") from None
        ids = [s.strip() for s in args.series.split(",")] if args.series else None
        series = load_trace(
            args.trace, args.format, step_s=args.step_s, ids=ids, limit=args.max_series
        )
        predictor = (
            Predictor.builtin() if args.checkpoint == "builtin" else Predictor.load(args.checkpoint)
        )
        cfg = BacktestConfig(
            lead_s=args.lead_s,
            violation_target=args.violation_target,
            seed=args.seed,
            retrain_every_s=args.retrain_every_s or None,
            retrain_windows=args.retrain_windows,
            retrain_epochs=args.retrain_epochs,
            promotion=PromotionRule(always=args.always_promote),
            warmup_s=args.warmup_s,
            tail_resources=tails,
            analog=not args.no_analog,
            **({} if args.analog_weight is None else {"analog_weight": args.analog_weight}),
        )
        t_load = time.perf_counter() - t0
        result = run_backtest(series, predictor, cfg)
    except (PraeError, ValueError) as exc:
        print(f"prae backtest: error: {exc}", file=sys.stderr)
        return 2
    result.timings["load"] = round(t_load, 3)
    table = score(result)
    goal = goals(table)
    text = format_tables(table, goal)
    out = Path(args.out)
    t1 = time.perf_counter()
    write_outputs(
        result,
        out,
        table,
        goal,
        text,
        extra={
            "trace": str(args.trace),
            "format": args.format,
            "checkpoint": args.checkpoint,
            "initial_model_version": predictor.version,
        },
    )
    result.timings["write"] = round(time.perf_counter() - t1, 3)
    plots = "plots skipped (--no-plots)" if args.no_plots else write_plots(result, out)
    print(text)
    print()
    print(
        f"{len(series)} series, {int(result.emitted().sum())} forecast rows, lead {args.lead_s:g} s, "
        f"step {result.grid.step_s:g} s; stage seconds: {result.timings}; total {time.perf_counter() - t0:.1f} s"
    )
    print(plots if isinstance(plots, str) else "plots: " + ", ".join(p.name for p in plots))
    if getattr(
        args, "simulate_cluster", False
    ):  # added by the simulator owner: prae/simulate/cli.py
        from prae.simulate.cli import run_after_backtest

        try:
            print()
            print(run_after_backtest(result, args, out))
        except ValueError as exc:
            print(f"prae backtest: error: {exc}", file=sys.stderr)
            return 2
    print(f"outputs in {out}")
    return 0
