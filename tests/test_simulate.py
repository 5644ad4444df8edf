"""The cluster simulator: pure numpy, milliseconds, no Ray."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import pytest

from prae.config import AllocatorSpec
from prae.resources import QUANTILES
from prae.simulate.cli import add_arguments, simulate_result, spec_from_args
from prae.simulate.cluster import ClusterSpec, NodeType, count_resizes, simulate
from prae.simulate.policies import baseline_allocation, prae_allocation, to_target
from prae.simulate.report import compare, sweep

GIB = 1024**3
STEP = 300.0
NODE = NodeType("n4", (4.0, 16.0 * GIB))
SPEC = ClusterSpec(NODE, startup_s=900.0, idle_timeout_s=0.0)  # 3 steps to boot


def stepped(t_n: int = 40, at: int = 20, low: float = 2.0, high: float = 10.0) -> np.ndarray:
    """(1, T, 2): one workload whose CPU jumps from ``low`` to ``high`` at step ``at``."""
    y = np.zeros((1, t_n, 2))
    y[0, :, 0] = low
    y[0, at:, 0] = high
    y[0, :, 1] = GIB
    return y


def test_exact_allocation_with_enough_lead_never_waits():
    y = stepped()
    out = simulate(y, y, SPEC, STEP, lead_steps=3)
    assert out.pending.sum() == 0
    assert out.nodes[0] == 1 and out.nodes[-1] == 3  # ceil(10 / 4)
    # 20 steps x 1 node + 20 steps x 3 nodes, plus 2 launches x 3 boot steps, 5-min steps
    assert out.node_hours == pytest.approx((20 * 1 + 20 * 3 + 2 * 3) * STEP / 3600)
    assert out.boot_node_hours == pytest.approx(2 * 3 * STEP / 3600)


def test_reactive_allocation_waits_for_the_start_up():
    y = stepped()
    reactive = to_target(y, 3)  # last value, decided 3 steps (one start-up) before
    reactive[:, :3] = y[:, :3]
    out = simulate(y, reactive, SPEC, STEP, lead_steps=3)
    # the jump is seen at step 20 and served from step 23: 3 steps x 8 cores short,
    # except what the one node's free capacity absorbs (4 - 2 = 2 cores)
    assert out.pending[0] == pytest.approx(3 * (8 - 2) * STEP)
    assert out.pending_share[0] == pytest.approx(3 * 6 / (20 * 2 + 20 * 10))


def test_short_lead_makes_nodes_late():
    y = stepped()
    on_time = simulate(y, y, SPEC, STEP, lead_steps=3)
    late = simulate(y, y, SPEC, STEP, lead_steps=1)  # known 1 step ahead, boot takes 3
    assert on_time.pending.sum() == 0
    assert late.pending[0] == pytest.approx(2 * 6 * STEP)


def test_idle_timeout_keeps_nodes_and_headroom_adds_them():
    y = stepped(t_n=40, at=20)
    y[0, 25:, 0] = 2.0  # a 5-step burst
    plain = simulate(y, y, SPEC, STEP, 3)
    sticky = simulate(y, y, ClusterSpec(NODE, 900.0, idle_timeout_s=600.0), STEP, 3)
    assert sticky.nodes[26] == 3 and plain.nodes[26] == 1 and sticky.node_hours > plain.node_hours
    roomy = simulate(y, y, SPEC, STEP, 3, headroom=1.0)
    assert roomy.nodes[0] == 1 and roomy.nodes[21] == 5  # ceil(20 / 4)


def test_held_but_unused_capacity_is_not_lent_and_floor_requests_hold_nothing():
    y = np.zeros((2, 10, 2))
    y[0, :, 0] = 1.0  # a holds 4, uses 1
    y[1, :, 0] = 4.0  # b holds 1, needs 4: 3 must come from unreserved capacity
    alloc = np.zeros_like(y)
    alloc[0, :, 0], alloc[1, :, 0] = 4.0, 1.0
    held = simulate(y, alloc, SPEC, STEP, 3)  # 5 cores wanted -> 2 nodes, 8 cores, 3 free
    assert held.pending.sum() == 0
    tight = simulate(y, alloc, ClusterSpec(NodeType("n5", (5.0, 16.0 * GIB)), 900.0, 0.0), STEP, 3)
    assert tight.pending[0] == pytest.approx(3 * 10 * STEP)  # 1 node of 5: a's 3 idle cores are held
    floor_only = simulate(y, alloc, ClusterSpec(NodeType("n5", (5.0, 16.0 * GIB)), 900.0, 0.0), STEP, 3,
                          reserved=np.array([[False] * 10, [True] * 10]))
    assert floor_only.pending.sum() == 0  # a's amount was only asked of the autoscaler
    assert tight.reserved_unused[0] == pytest.approx(3 * 10 * STEP)


def test_count_resizes_counts_changes_while_alive():
    a = np.zeros((1, 6, 2))
    a[0, :, 0] = [1, 1, 2, 2, 1, 1]
    alive = np.array([[True] * 6])
    assert count_resizes(a, alive) == (2, 6.0)


def test_sweep_finds_the_cheapest_headroom_meeting_the_target():
    y = stepped()
    pa = baseline_allocation("last_value", y, y, 3, STEP)
    assert pa.name == "reactive"
    row = sweep(pa, y, SPEC, STEP, 3, pending_target=0.01, score_from=3)
    assert row.headroom is not None and row.pending_share_cpu <= 0.01
    tighter = sweep(pa, y, SPEC, STEP, 3, pending_target=0.2, score_from=3)
    assert tighter.headroom <= row.headroom and tighter.node_hours <= row.node_hours


def _quantiles(y: np.ndarray, lead: int, spread: float = 0.1) -> np.ndarray:
    """Perfect-median forecasts issued at t for t + lead, +-spread around it."""
    s_n, t_n, _ = y.shape
    q = np.full((s_n, t_n, 4, len(QUANTILES)), np.nan, np.float32)
    fut = np.full((s_n, t_n, 2), np.nan)
    fut[:, : t_n - lead] = y[:, lead:, :2]
    factors = {0.1: 1 - spread, 0.5: 1.0, 0.9: 1 + spread, 0.95: 1 + 1.5 * spread, 0.99: 1 + 2 * spread}
    for j, lvl in enumerate(QUANTILES):
        q[:, :, :2, j] = fut * factors[lvl]
    q[:, :, 2:, :] = 0.0
    q[np.isnan(q[:, :, 0, 2])] = np.nan
    return q


def test_prae_through_the_live_planner_leads_the_step():
    y4 = np.concatenate([stepped(), np.zeros((1, 40, 2))], axis=2)
    q = _quantiles(y4, 3, spread=0.0)
    pa = prae_allocation("prae", q, y4, ["w"], 3, STEP, AllocatorSpec(reserve_quantile=0.9))
    out = simulate(y4[..., :2], pa.alloc, SPEC, STEP, 3, 0.0, pa.reserved, score_from=3)
    assert out.pending.sum() == 0  # reserved before the jump, through plan_requests
    assert pa.alloc[0, 20, 0] == 10.0 and pa.reserved[0, 20]
    assert pa.reasons["live_trend"] > 0 and pa.resizes >= 1


def test_prae_hysteresis_keeps_resizes_few():
    rng = np.random.default_rng(0)
    y = np.zeros((1, 200, 4))
    y[0, :, 0] = 4.0 + rng.normal(0, 0.4, 200)  # a noisy steady workload
    y[0, :, 1] = GIB
    q = _quantiles(y, 3)
    pa = prae_allocation("prae", q, y, ["w"], 3, STEP, AllocatorSpec(hysteresis=0.25))
    raw = baseline_allocation("last_value", y, y, 3, STEP)
    assert pa.resizes < raw.resizes / 3


def _fake_result(y: np.ndarray, lead: int) -> SimpleNamespace:
    """What simulate_result reads from a prae.backtest BacktestResult."""
    q = _quantiles(y, lead)
    oracle = np.concatenate([y[:, lead:], np.full((len(y), lead, 4), np.nan)], axis=1)
    return SimpleNamespace(
        grid=SimpleNamespace(y=y, step_s=STEP, series_ids=tuple(f"s{i}" for i in range(len(y)))),
        lead_steps=lead,
        calibrated=q,
        alloc={0.01: q[..., QUANTILES.index(0.95)]},
        baselines={"last_value": y.copy(), "oracle": oracle},
        config=SimpleNamespace(violation_target=0.01, warmup_s=0.0),
    )


def test_simulate_result_compares_at_the_same_pending_demand():
    rng = np.random.default_rng(1)
    t_n = 120
    y = np.zeros((6, t_n, 4))
    for i in range(6):
        y[i, :, 0] = 2 + 2 * (np.arange(t_n) // 20 % 2) * (i % 2) + rng.uniform(0, 0.2, t_n)
    y[:, :, 1] = GIB
    args = argparse.ArgumentParser()
    add_arguments(args)
    ns = args.parse_args(["--simulate-cluster", "--node-cpus", "4", "--startup-s", "900", "--idle-timeout-s", "0"])
    report = simulate_result(_fake_result(y, 3), spec_from_args(ns), ns.pending_target)
    rows = {r["policy"]: r for r in report["rows"]}
    assert {"prae_q0.9", "prae_q0.5_hold3h", "prae_budget_hold3h", "planner_no_forecast_hold3h", "reactive", "oracle", "max_3h_ref"} <= set(rows)
    assert all(r["pending_share_cpu"] <= 0.01 for r in rows.values() if r["headroom"] is not None)
    assert rows["oracle"]["node_hours"] <= rows["reactive"]["node_hours"]
    assert report["goal"]["best_baseline"] == "reactive"  # the only non-oracle baseline here
    assert "node-h" in report["table"]


def test_bad_cluster_options_fail_early_with_the_rule(capsys):
    p = argparse.ArgumentParser()
    add_arguments(p)
    for argv, rule in ((["--node-cpus", "0"], "must be > 0"), (["--pending-target", "2"], "<= 1")):
        with pytest.raises(SystemExit):
            p.parse_args(argv)
        assert rule in capsys.readouterr().err
    with pytest.raises(ValueError, match="--node-memory"):
        spec_from_args(p.parse_args(["--node-memory", "0"]))


def test_compare_marks_the_goal():
    from prae.simulate.report import PolicyRow

    def row(name: str, nh: float) -> PolicyRow:
        return PolicyRow(name, 0.0, nh, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0.0)

    rows, goal = compare([row("prae_q0.9", 80), row("vpa", 100), row("reactive", 120), row("oracle", 70)])
    assert goal["best_baseline"] == "vpa" and goal["prae_vs_best_baseline"] == pytest.approx(0.8)
    assert goal["goal_prae_le_0.85"] and goal["reactive_vs_best_baseline"] == pytest.approx(1.2)
