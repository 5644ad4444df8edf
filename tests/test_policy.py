"""The pure decision layer: confidence, hysteresis, priority order, budgets, fallback rule."""

from __future__ import annotations

import numpy as np
import pytest

from prae.config import AllocatorSpec, Bounds
from prae.policy.fallback import rule_forecast
from prae.policy.requests import (
    CPU_STEP,
    MEM_STEP,
    Interval,
    WorkloadForecast,
    WorkloadPolicy,
    apply_hysteresis,
    interval_confidence,
    plan_requests,
)
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
