"""Per-workload allocations for the cluster simulator, from a ``prae backtest`` replay.

Every policy's allocation for target step tau is what it decided at tau - lead, from the
rows it had then:

    prae_q<level>   PRAE: the calibrated forecast at the lead, through the same
                    ReservationPlanner the live allocator uses (reserve quantile, reactive
                    correction, rounding, bounds, hysteresis, resize limit, confidence ->
                    placement group or autoscaler floor)
    ..._hold3h      the same with a 3-hour peak hold (ResizeLimits.peak_hold_s)
    prae_budget...  the same planner fed the violation-budget amounts (one level per
                    workload, chosen across the cluster; prae.policy.violation_budget)
    <baseline>      reactive (last value), max_1h, vpa, autopilot, seasonal_naive, oracle:
                    prae.backtest.baselines' values, held as reservations, rounded up to
                    the same steps as PRAE's
    planner_no_forecast_hold3h
                    an ablation: the same planner (3-hour peak hold) fed the last observed
                    usage instead of a forecast -- what the planner gives without the model
    max_3h_ref      a reference, not one of the issue's baselines: the usage max over the
                    last 3 hours (prae.backtest.baselines.window_max), to show how much of
                    a peak hold's gain a plain longer window gets too

Only the first two resources (cpu, mem) are allocated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prae.config import AllocatorSpec
from prae.policy.requests import (
    CPU_STEP,
    MEM_STEP,
    Interval,
    ReservationPlanner,
    WorkloadForecast,
    WorkloadPolicy,
)
from prae.policy.resizes import ResizeLimits
from prae.resources import ALLOCATED, CPU, MEM, QUANTILES, RESOURCES

BASELINE_NAMES = {"last_value": "reactive"}  # what the report calls them


@dataclass
class PolicyAllocation:
    name: str
    alloc: np.ndarray  # (S, T, 2) target-aligned: in force during step tau
    reserved: np.ndarray  # (S, T) bool: held (placement group) vs only asked of the autoscaler
    resizes: int
    workload_hours: float
    reasons: dict[str, int]

    @property
    def resizes_per_workload_hour(self) -> float:
        return self.resizes / self.workload_hours if self.workload_hours > 0 else 0.0


def to_target(values: np.ndarray, lead: int) -> np.ndarray:
    """(S, T, ...) decided at issue step t -> (S, T, ...) in force at t + lead (NaN before)."""
    out = np.full_like(values, np.nan, dtype=np.float64)
    out[:, lead:] = values[:, : values.shape[1] - lead]
    return out


def round_steps(x: np.ndarray) -> np.ndarray:
    """(..., 2) cpu, mem rounded up to PRAE's reservation steps (0.25 core, 64 MiB)."""
    out = np.array(x, dtype=np.float64)
    out[..., 0] = np.ceil(out[..., 0] / CPU_STEP - 1e-9) * CPU_STEP
    out[..., 1] = np.ceil(out[..., 1] / MEM_STEP - 1e-9) * MEM_STEP
    return out


def _alive(y: np.ndarray) -> np.ndarray:
    """(S, T) bool: the workload runs (between its first and last observation)."""
    obs = ~np.isnan(y[..., list(ALLOCATED)]).all(axis=2)
    first = np.where(obs.any(axis=1), obs.argmax(axis=1), obs.shape[1])
    last = obs.shape[1] - 1 - np.where(obs.any(axis=1), obs[:, ::-1].argmax(axis=1), obs.shape[1])
    t = np.arange(obs.shape[1])[None, :]
    return (t >= first[:, None]) & (t <= last[:, None])


def baseline_allocation(name: str, values: np.ndarray, y: np.ndarray, lead: int, step_s: float) -> PolicyAllocation:
    """A backtest baseline's values (S, T, R) for t + lead, as held reservations."""
    alive = _alive(y)
    v = np.where(alive[:, :, None], values[..., list(ALLOCATED)], np.nan)
    alloc = round_steps(np.nan_to_num(to_target(v, lead)).clip(min=0))
    alloc = np.where(alive[:, :, None], alloc, 0.0)
    n, steps = _count(alloc, alive)
    return PolicyAllocation(
        BASELINE_NAMES.get(name, name), alloc, alive.copy(), n, steps * step_s / 3600.0, {}
    )


def _count(alloc: np.ndarray, alive: np.ndarray) -> tuple[int, float]:
    from prae.simulate.cluster import count_resizes

    return count_resizes(alloc, alive)


def prae_allocation(
    name: str,
    quantiles: np.ndarray,
    y: np.ndarray,
    series_ids: Sequence[str],
    lead: int,
    step_s: float,
    spec: AllocatorSpec,
    reserve_amounts: np.ndarray | None = None,
    policies: dict[str, WorkloadPolicy] | None = None,
    limits: ResizeLimits | None = None,
) -> PolicyAllocation:
    """PRAE through :class:`ReservationPlanner`, one planning tick per grid step.

    quantiles: (S, T, R, Q) calibrated forecasts issued at t for t + lead (NaN = none);
    y: (S, T, R) usage. ``reserve_amounts`` (S, T, R): amounts to reserve instead of the
    forecast at ``spec.reserve_quantile`` (e.g. the violation-budget allocation).
    """
    s_n, t_n = y.shape[:2]
    iq = {lvl: j for j, lvl in enumerate(QUANTILES)}
    rq = iq[spec.reserve_quantile]
    planner = ReservationPlanner(spec, policies or {}, limits)
    issued = np.full((s_n, t_n, 2), np.nan)
    is_pg = np.zeros((s_n, t_n), dtype=bool)
    reasons: dict[str, int] = {}
    last = np.full((s_n, len(RESOURCES)), np.nan)
    has_fc = ~np.isnan(quantiles[:, :, CPU, iq[0.5]])
    alive = _alive(y)
    lead_s = lead * step_s
    running: set[int] = set()
    for t in range(t_n):
        now = t * step_s
        obs = ~np.isnan(y[:, t])
        last = np.where(obs, y[:, t], last)
        idx = np.flatnonzero(has_fc[:, t] & alive[:, t])
        for i in running - set(idx.tolist()):
            if not alive[i, t]:
                planner.forget(series_ids[i], now)
        running = set(idx.tolist())
        if idx.size == 0:
            continue
        q = np.nan_to_num(quantiles[idx, t].astype(np.float64)).clip(min=0)  # (n, R, Q)
        amt = q[:, :, rq] if reserve_amounts is None else np.nan_to_num(reserve_amounts[idx, t]).clip(min=0)
        now_v = np.nan_to_num(last[idx])
        fcs = [
            WorkloadForecast(
                workload=series_ids[i],
                issued_at=now,
                lead_s=lead_s,
                cpu=Interval(float(q[k, CPU, iq[0.1]]), float(q[k, CPU, iq[0.5]]), float(q[k, CPU, iq[0.9]])),
                mem=Interval(float(q[k, MEM, iq[0.1]]), float(q[k, MEM, iq[0.5]]), float(q[k, MEM, iq[0.9]])),
                cpu_reserve_q=float(amt[k, CPU]),
                mem_reserve_q=float(amt[k, MEM]),
                cpu_now=float(now_v[k, CPU]),
                mem_now=float(now_v[k, MEM]),
            )
            for k, i in enumerate(idx)
        ]
        row = {series_ids[i]: i for i in idx}
        for req in planner.plan(fcs, now):
            i = row[req.workload]
            issued[i, t] = (req.cpu, req.mem)
            is_pg[i, t] = req.realisation == "placement_group"
            reasons[req.reason] = reasons.get(req.reason, 0) + 1
    alloc = np.nan_to_num(to_target(issued, lead))
    alloc = np.where(alive[:, :, None], alloc, 0.0)
    reserved = np.zeros_like(is_pg)
    reserved[:, lead:] = is_pg[:, : t_n - lead]
    summ = planner.ledger.summary()
    return PolicyAllocation(name, alloc, reserved, int(summ["resizes"]), summ["workload_hours"], reasons)


HOLD_3H = ResizeLimits(peak_hold_s=3 * 3600.0)
# (name, reserve quantile, or "budget" / "last_value" amounts, resize limits)
PRAE_VARIANTS: tuple[tuple[str, float | str, ResizeLimits | None], ...] = (
    ("prae_q0.5", 0.5, None),
    ("prae_q0.9", 0.9, None),
    ("prae_q0.5_hold3h", 0.5, HOLD_3H),
    ("prae_q0.9_hold3h", 0.9, HOLD_3H),
    ("prae_budget_hold3h", "budget", HOLD_3H),
    ("planner_no_forecast_hold3h", "last_value", HOLD_3H),
)
REFERENCE_WINDOW_S = 3 * 3600.0


def all_allocations(
    result: Any,
    spec: AllocatorSpec | None = None,
    variants: Sequence[tuple[str, float | str, ResizeLimits | None]] = PRAE_VARIANTS,
    reference: bool = True,
) -> list[PolicyAllocation]:
    """Every policy of a ``prae.backtest.runner.BacktestResult``: PRAE variants, the
    backtest's baselines and (``reference``) the max-3h reference."""
    from prae.backtest.baselines import last_value, window_max

    spec = spec or AllocatorSpec()
    g = result.grid
    lead = result.lead_steps
    out = []
    for name, level, limits in variants:
        if level in ("budget", "last_value"):
            amounts = result.alloc.get(result.config.violation_target) if level == "budget" else last_value(g.y)
            if amounts is None:
                continue
            s = AllocatorSpec(**{**spec.__dict__, "reserve_quantile": 0.5})
            out.append(prae_allocation(name, result.calibrated, g.y, g.series_ids, lead, g.step_s, s,
                                       reserve_amounts=amounts, limits=limits))
        else:
            s = AllocatorSpec(**{**spec.__dict__, "reserve_quantile": float(level)})
            out.append(prae_allocation(name, result.calibrated, g.y, g.series_ids, lead, g.step_s, s, limits=limits))
    for name, values in result.baselines.items():
        out.append(baseline_allocation(name, values, g.y, lead, g.step_s))
    if reference:
        steps = max(1, int(round(REFERENCE_WINDOW_S / g.step_s)))
        ref = window_max(g.y, steps)
        ref = np.where(np.isnan(ref), last_value(g.y), ref)
        out.append(baseline_allocation("max_3h_ref", ref, g.y, lead, g.step_s))
    return out


def score_from(result: Any) -> int:
    """First target step scored: after the backtest's warm-up and one lead."""
    return int(math.ceil(result.config.warmup_s / result.grid.step_s - 1e-9)) + result.lead_steps
