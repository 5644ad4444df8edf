"""The pure decision layer: confidence, hysteresis, priority order, budgets, fallback rule."""

from __future__ import annotations

import numpy as np
import pytest

from prae.config import AllocatorSpec, Bounds
from prae.policy.fallback import rule_forecast
from prae.policy.priority import confidence_band, serve_rank
from prae.policy.requests import (
    CPU_STEP,
    MEM_STEP,
    Interval,
    ReservationPlanner,
    WorkloadForecast,
    WorkloadPolicy,
    apply_hysteresis,
    interval_confidence,
    plan_requests,
)
from prae.policy.resizes import ResizeLedger, ResizeLimits, classify
from prae.resources import QUANTILES

GIB = 1024**3


def make_forecast(name="w", cpu=(1.0, 2.0, 3.0), mem=(1 * GIB, 1 * GIB, 1 * GIB), reserve=None, now=(1.0, GIB), **kw):
    cpu_iv, mem_iv = Interval(*cpu), Interval(*mem)
    return WorkloadForecast(
        workload=name,
        issued_at=100.0,
        lead_s=5.0,
        cpu=cpu_iv,
        mem=mem_iv,
        cpu_reserve_q=reserve[0] if reserve else cpu_iv.high,
        mem_reserve_q=reserve[1] if reserve else mem_iv.high,
        cpu_now=now[0],
        mem_now=now[1],
        **kw,
    )


def test_confidence_worked_numbers():
    assert interval_confidence(Interval(1.8, 2.0, 2.2)) == pytest.approx(1 / 1.2)
    assert interval_confidence(Interval(1.0, 2.0, 3.0)) == pytest.approx(0.5)
    assert interval_confidence(Interval(0.0, 0.0, 0.0)) == 1.0
    # scale-free: a 64-core job with the same relative spread has the same confidence
    assert interval_confidence(Interval(32, 64, 96)) == pytest.approx(interval_confidence(Interval(1, 2, 3)))


def test_hysteresis_grows_at_once_and_shrinks_late():
    assert apply_hysteresis(2.0, 2.5, 0.25) == 2.5
    assert apply_hysteresis(2.0, 1.6, 0.25) == 2.0
    assert apply_hysteresis(2.0, 1.4, 0.25) == 1.4
    assert apply_hysteresis(0.0, 1.0, 0.25) == 1.0


def test_requests_ordered_by_priority_then_confidence():
    sure = make_forecast("sure", cpu=(1.9, 2.0, 2.1))
    vague = make_forecast("vague", cpu=(0.5, 2.0, 6.0))
    vip = make_forecast("vip", cpu=(0.1, 2.0, 9.0))
    policies = {"vip": WorkloadPolicy(priority=5)}
    reqs = plan_requests([vague, sure, vip], policies, {}, AllocatorSpec())
    assert [r.workload for r in reqs] == ["vip", "sure", "vague"]
    assert reqs[1].confidence > reqs[2].confidence


def test_reserve_is_rounded_up_bounded_and_reasoned():
    fc = make_forecast(cpu=(1.0, 1.2, 1.31), mem=(GIB, GIB, GIB + 1))
    (req,) = plan_requests([fc], {}, {}, AllocatorSpec())
    assert req.cpu == pytest.approx(1.5) and req.cpu % CPU_STEP == pytest.approx(0)
    assert req.mem == pytest.approx(GIB + MEM_STEP)
    assert req.reason == "live_trend" and req.needed_at == 105.0
    bounded = {"w": WorkloadPolicy(bounds=Bounds(cpu_min=0.5, cpu_max=1.0))}
    (req,) = plan_requests([fc], bounded, {}, AllocatorSpec())
    assert req.cpu == 1.0


def test_reactive_correction_when_demand_is_already_above_forecast():
    fc = make_forecast(cpu=(1.0, 1.0, 1.0), now=(3.2, GIB))
    (req,) = plan_requests([fc], {}, {}, AllocatorSpec())
    assert req.reason == "reactive_correction" and req.cpu >= 3.2


def test_shadow_lead_reason_and_fallback_confidence_cap():
    (req,) = plan_requests([make_forecast(shadow_used=True)], {}, {}, AllocatorSpec())
    assert req.reason == "shadow_lead"
    (req,) = plan_requests([make_forecast(cpu=(2, 2, 2), from_fallback=True)], {}, {}, AllocatorSpec())
    assert req.confidence <= 0.3


def test_budget_overflow_becomes_autoscaler_floor_and_observe_only():
    a = make_forecast("a", cpu=(2.9, 3.0, 3.0))
    b = make_forecast("b", cpu=(2.0, 3.0, 3.0))
    reqs = plan_requests([a, b], {}, {}, AllocatorSpec(cpu_budget=4))
    assert [r.realisation for r in reqs] == ["placement_group", "autoscaler_floor"]
    reqs = plan_requests([a, b], {}, {}, AllocatorSpec(enabled=False))
    assert {r.realisation for r in reqs} == {"observe_only"}


def test_low_confidence_goes_to_floor():
    fc = make_forecast(cpu=(0.1, 1.0, 10.0))
    (req,) = plan_requests([fc], {}, {}, AllocatorSpec(min_confidence_for_pg=0.5))
    assert req.realisation == "autoscaler_floor"


def test_held_reservation_is_kept_within_hysteresis():
    fc = make_forecast(cpu=(1.5, 1.7, 1.75))
    (req,) = plan_requests([fc], {}, {"w": (2.0, GIB)}, AllocatorSpec(hysteresis=0.25))
    assert req.cpu == 2.0


def test_rule_forecast_shape_monotone_and_handles_nan():
    live = np.full((3, 10, 4), np.nan)
    live[0, :, 0] = np.arange(10)
    live[1, -1, :] = 5.0
    q = rule_forecast(live, horizon_steps=4)
    assert q.shape == (3, 4, 4, len(QUANTILES))
    assert np.all(np.diff(q, axis=-1) >= 0)
    assert q[0, 0, 0, QUANTILES.index(0.5)] == 9.0
    assert q[1, 0, 2, QUANTILES.index(0.5)] == 5.0
    assert np.all(q[2] == 0.0)


def test_confidence_to_priority_rule_worked_example():
    assert [confidence_band(c) for c in (0.83, 0.86, 0.79, 1.0, 0.0)] == [8, 8, 7, 10, 0]
    a = serve_rank(0, 0.86, 30.0, 10.0, "A")
    b = serve_rank(0, 0.83, 5.0, 10.0, "B")
    c = serve_rank(1, 0.40, None, 10.0, "C")
    assert sorted([a, b, c]) == [c, b, a]
    # no SLO sorts after any SLO; then the earlier need; then the name
    assert serve_rank(0, 0.5, 60.0, 10.0, "x") < serve_rank(0, 0.5, None, 0.0, "a")
    assert serve_rank(0, 0.5, None, 5.0, "z") < serve_rank(0, 0.5, None, 6.0, "a")


def test_requests_carry_slo_priority_and_serve_tighter_slo_first():
    fast = make_forecast("fast", cpu=(1.9, 2.0, 2.1))
    slow = make_forecast("slow", cpu=(1.9, 2.0, 2.1))
    pol = {"fast": WorkloadPolicy(max_pending_s=5.0), "slow": WorkloadPolicy(priority=0, max_pending_s=300.0)}
    reqs = plan_requests([slow, fast], pol, {}, AllocatorSpec())
    assert [r.workload for r in reqs] == ["fast", "slow"]
    assert reqs[0].slo_s == 5.0 and reqs[0].priority == 0 and reqs[0].needed_at == 105.0
    assert reqs[0].cpu_expected == 2.0 and reqs[0].cpu == 2.25  # expected = median, reserved = q0.9 rounded


def test_unit_sized_reservations_and_bounds_cap_held_amounts():
    fc = make_forecast(cpu=(1.0, 1.2, 1.31))
    (req,) = plan_requests([fc], {"w": WorkloadPolicy(unit_cpu=1.0)}, {}, AllocatorSpec())
    assert req.cpu == 2.0 and req.bundle_cpu == 1.0
    # bounds cap even what hysteresis would keep
    capped = {"w": WorkloadPolicy(bounds=Bounds(cpu_max=1.0))}
    (req,) = plan_requests([fc], capped, {"w": (4.0, GIB)}, AllocatorSpec(hysteresis=0.9))
    assert req.cpu == 1.0 and req.change == "shrink"


def test_profile_prior_reason_when_the_profile_floor_sets_the_amount():
    fc = make_forecast(cpu=(0.1, 0.2, 0.3), now=(0.1, GIB))
    (req,) = plan_requests([fc], {"w": WorkloadPolicy(bounds=Bounds(cpu_min=2.0))}, {}, AllocatorSpec())
    assert req.reason == "profile_prior" and req.cpu == 2.0


def test_change_classification():
    assert classify((0, 0), (1, 0)) == "new"
    assert classify((1, 0), (2, 0)) == "grow"
    assert classify((2, 0), (1, 0)) == "shrink"
    assert classify((2, GIB), (2, GIB)) == "hold"
    assert classify((2, GIB), (0, 0)) == "release"


def test_resize_ledger_limits_shrinks_per_hour_and_counts_per_workload_hour():
    ledger = ResizeLedger(ResizeLimits(max_shrinks_per_hour=2, min_hold_s=60))
    ledger.record("w", "new", 0.0)
    assert not ledger.shrink_allowed("w", 30.0)  # held for less than min_hold_s
    for t in (100.0, 200.0):
        assert ledger.shrink_allowed("w", t)
        ledger.record("w", "shrink", t)
    assert not ledger.shrink_allowed("w", 300.0)  # two shrinks in the last hour
    ledger.record("w", "grow", 400.0)  # growing is never limited
    assert ledger.shrink_allowed("w", 3700.0)  # the first shrink left the window
    ledger.record("w", "hold", 3600.0)
    assert ledger.resizes("w") == 3
    assert ledger.per_workload_hour()["w"] == pytest.approx(3.0)
    assert ledger.summary()["resizes_per_workload_hour"] == pytest.approx(3.0)


def test_planner_holds_against_what_it_asked_and_rate_limits_shrinks():
    planner = ReservationPlanner(AllocatorSpec(hysteresis=0.25), {}, ResizeLimits(max_shrinks_per_hour=1))

    def plan(t, hi):
        # the broker reports nothing held yet (the group is still pending in Ray)
        (req,) = planner.plan([make_forecast(cpu=(hi * 0.9, hi * 0.95, hi))], now=t, held={})
        return req

    assert plan(0, 4.0).cpu == 4.0
    assert plan(1, 3.5).cpu == 4.0  # within hysteresis of what was asked, not of 0 held
    assert plan(2, 2.0).cpu == 2.0  # a real drop: shrink
    assert plan(3, 4.0).cpu == 4.0  # growth at once
    assert plan(4, 2.0).cpu == 4.0  # a second shrink within the hour: held back
    assert plan(3700, 2.0).cpu == 2.0
    assert planner.ledger.resizes("w") == 3
    planner.forget("w", 3800)
    assert "w" not in planner.asked


def test_planner_peak_hold_keeps_the_recent_peak():
    planner = ReservationPlanner(AllocatorSpec(hysteresis=0.0), {}, ResizeLimits(max_shrinks_per_hour=100, peak_hold_s=600))

    def plan(t, hi, now_cpu=1.0):
        (req,) = planner.plan([make_forecast(cpu=(hi * 0.9, hi * 0.95, hi), now=(now_cpu, GIB))], now=t)
        return req.cpu

    assert plan(0, 2.0, now_cpu=5.0) == 5.0  # usage above the forecast: reactive correction
    assert plan(300, 2.0) == 5.0  # the 5 cores used 5 min ago are held ...
    assert plan(601, 2.0) == 2.0  # ... for peak_hold_s, then let go
