"""The cluster simulator on real traces: PRAE vs reactive, VPA, Autopilot, ... vs the oracle.

    .venv/bin/python bench/cluster_sim.py [--max-series 100] [--days 30] [--node-cpus 16]

Runs the backtest (the shipped model, calibrated online; baselines from prae.backtest) on
the Bitbrains Rnd trace, then `prae backtest --simulate-cluster`'s comparison: every policy
on a cluster of identical nodes with a 15-min start-up, at the cheapest headroom that keeps
its pending demand <= 1 % of demand. The same as

    prae backtest --trace <bitbrains> --max-series 100 --lead-s 900 --out DIR --simulate-cluster

The last line is JSON: node-hours per policy and the ratios to the best baseline.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prae.backtest.runner import BacktestConfig, run_backtest  # noqa: E402
from prae.model.predictor import Predictor  # noqa: E402
from prae.simulate.cli import add_arguments, simulate_result, spec_from_args  # noqa: E402
from prae.traces import load_trace  # noqa: E402
from prae.traces.series import Series  # noqa: E402

TRACE = "/work/shared/traces/bitbrains-rnd-2013-07"


def truncate(series: list[Series], days: float | None) -> list[Series]:
    if not days:
        return series
    out = []
    for s in series:
        n = int(days * 86400 / s.step_s)
        out.append(Series(s.series_id, s.start_s, s.step_s, s.values[:n], s.source, s.meta))
    return [s for s in out if len(s)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", default=TRACE)
    p.add_argument("--format", default="bitbrains")
    p.add_argument("--max-series", type=int, default=100)
    p.add_argument("--days", type=float, default=None, help="keep each series' first days (default: all)")
    p.add_argument("--retrain-every-s", type=float, default=0.0, help="0 = the shipped model only (default)")
    p.add_argument("--cache", default=None, help="pickle the backtest result here / reuse it if present")
    p.add_argument("--out", default=None, help="write the full report JSON here")
    add_arguments(p)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        result = pickle.loads(cache.read_bytes())
    else:
        series = truncate(load_trace(args.trace, args.format, limit=args.max_series), args.days)
        cfg = BacktestConfig(lead_s=900.0, retrain_every_s=args.retrain_every_s or None)
        result = run_backtest(series, Predictor.builtin(), cfg)
        if cache is not None:
            cache.write_bytes(pickle.dumps(result))
    t_bt = time.perf_counter() - t0
    y = np.nan_to_num(result.grid.y[..., 0]).sum(axis=0)
    print(f"{len(result.grid.series_ids)} series, {result.grid.n_steps} steps of {result.grid.step_s:g} s; "
          f"summed CPU demand mean {y.mean():.1f}, p99 {np.percentile(y, 99):.1f}, max {y.max():.1f} cores "
          f"(= {y.max() / args.node_cpus:.1f} nodes of {args.node_cpus:g}); backtest {t_bt:.0f} s")
    report = simulate_result(result, spec_from_args(args), args.pending_target)
    print(report["table"])
    if report["note"]:
        print("note:", report["note"])
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    rows = {r["policy"]: r for r in report["rows"]}
    summary = {
        "node_hours": {k: (round(v["node_hours"], 1) if v["node_hours"] != float("inf") else None)
                       for k, v in rows.items()},
        **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in report["goal"].items()},
        "series": report["series"],
        "startup_s": report["cluster"]["startup_s"],
        "node_cpus": args.node_cpus,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
