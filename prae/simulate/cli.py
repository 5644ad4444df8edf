"""``prae backtest --simulate-cluster``: the options, and the step run after the backtest."""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prae.config import parse_size
from prae.json_out import strict_dumps


def _number(low: float, high: float = math.inf, low_open: bool = False) -> Any:
    """An argparse type: a float in [low, high] (or (low, high]), failing early with the rule."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
        if not (low < v if low_open else low <= v) or v > high:
            rule = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return v

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster simulation (--simulate-cluster)")
    g.add_argument("--simulate-cluster", action="store_true",
                   help="also replay every policy on a simulated autoscaling cluster")
    g.add_argument("--node-cpus", type=_number(0, low_open=True), default=16.0, help="cores per node (default 16)")
    g.add_argument("--node-memory", default="64GiB", help="memory per node (default 64GiB)")
    g.add_argument("--node-type", default="n16", help="a name for the node type in the report")
    g.add_argument("--startup-s", type=_number(0), default=900.0, help="node start-up delay in seconds (default 900)")
    g.add_argument("--idle-timeout-s", type=_number(0), default=600.0,
                   help="a node unneeded this long is removed (default 600)")
    g.add_argument("--pending-target", type=_number(0, 1, low_open=True), default=0.01,
                   help="compare policies at pending demand <= this share of demand (default 0.01)")


def spec_from_args(args: argparse.Namespace) -> Any:
    from prae.simulate.cluster import ClusterSpec, NodeType

    if args.node_cpus <= 0:
        raise ValueError(f"--node-cpus must be > 0, got {args.node_cpus}")
    if args.startup_s < 0 or args.idle_timeout_s < 0:
        raise ValueError("--startup-s and --idle-timeout-s must be >= 0")
    if not 0 < args.pending_target < 1:
        raise ValueError(f"--pending-target must be in (0, 1), got {args.pending_target}")
    mem = float(parse_size(args.node_memory))
    if mem <= 0:
        raise ValueError(f"--node-memory must be > 0, got {args.node_memory}")
    return ClusterSpec(NodeType(args.node_type, (float(args.node_cpus), mem)), args.startup_s, args.idle_timeout_s)


def simulate_result(result: Any, spec: Any, pending_target: float) -> dict[str, Any]:
    """Every policy of a BacktestResult on the cluster ``spec``; a JSON-ready dict."""
    from prae.simulate.policies import ALLOCATED, all_allocations, score_from
    from prae.simulate.report import compare, format_table, sweep

    t0 = time.perf_counter()
    g = result.grid
    if spec.startup_s > result.lead_steps * g.step_s + 1e-9:
        note = (f"node start-up {spec.startup_s:g} s is longer than the forecast lead "
                f"{result.lead_steps * g.step_s:g} s: every policy's nodes arrive late")
    else:
        note = ""
    allocs = all_allocations(result)
    t_alloc = time.perf_counter() - t0
    demand = g.y[..., list(ALLOCATED)]
    start = score_from(result)
    rows = [sweep(pa, demand, spec, g.step_s, result.lead_steps, pending_target, start) for pa in allocs]
    rows, goal = compare(rows)
    text = format_table(rows, goal, pending_target)
    reasons = {pa.name: pa.reasons for pa in allocs if pa.reasons}
    return {
        "cluster": {"node": spec.node.name, "capacity": list(spec.node.capacity), "startup_s": spec.startup_s,
                    "idle_timeout_s": spec.idle_timeout_s},
        "series": len(g.series_ids),
        "step_s": g.step_s,
        "lead_s": result.lead_steps * g.step_s,
        "pending_target": pending_target,
        "rows": [asdict(r) for r in rows],
        "goal": goal,
        "reasons": reasons,
        "note": note,
        "seconds": {"allocations": round(t_alloc, 1), "total": round(time.perf_counter() - t0, 1)},
        "table": text,
    }


def run_after_backtest(result: Any, args: argparse.Namespace, out: Path) -> str:
    """Called by ``prae backtest`` when ``--simulate-cluster`` is given; writes
    ``cluster_sim.json`` in the output folder and returns the table to print."""
    report = simulate_result(result, spec_from_args(args), args.pending_target)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster_sim.json").write_text(strict_dumps(report))
    return report["table"] + (f"\nnote: {report['note']}" if report["note"] else "")

