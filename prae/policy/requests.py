"""Forecasts in, resource requests out: the pure decision layer (no Ray, no clock, no I/O).

The engine hands :func:`plan_requests` one :class:`WorkloadForecast` per workload each tick;
it gets back :class:`ResourceRequest` objects ordered by who is served first. How a request
is realised (placement group or autoscaler floor) is the broker's business, not this module's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from prae.config import AllocatorSpec, Bounds

Reason = Literal["live_trend", "shadow_lead", "profile_prior", "reactive_correction"]
Realisation = Literal["placement_group", "autoscaler_floor", "observe_only"]

# Reservations are rounded up to these steps so that noise in the forecast does not
# turn into a stream of tiny resizes: 0.25 core, 64 MiB.
CPU_STEP = 0.25
MEM_STEP = 64 * 1024**2


@dataclass(frozen=True)
class Interval:
    low: float  # q0.1
    median: float  # q0.5
    high: float  # q0.9


@dataclass(frozen=True)
class WorkloadForecast:
    """What the predictor said about one workload, at the lead time."""

    workload: str
    issued_at: float
    lead_s: float
    cpu: Interval
    mem: Interval
    cpu_reserve_q: float  # the forecast at the reserve quantile (e.g. q0.9)
    mem_reserve_q: float
    cpu_now: float  # latest observed usage
    mem_now: float
    shadow_used: bool = False
    from_fallback: bool = False


@dataclass(frozen=True)
class WorkloadPolicy:
    """What the user's profile says about one workload."""

    priority: int = 0
    max_pending_s: float | None = None
    bounds: Bounds = field(default_factory=Bounds)


@dataclass(frozen=True)
class ResourceRequest:
    workload: str
    issued_at: float
    needed_at: float
    cpu_expected: float
    mem_expected: float
    cpu: float  # to reserve
    mem: float  # to reserve, bytes
    cpu_interval: Interval
    mem_interval: Interval
    confidence: float  # in (0, 1]
    priority: int  # the workload's priority from its profile
    max_pending_s: float | None
    realisation: Realisation
    reason: Reason

    @property
    def sort_key(self) -> tuple[float, float, str]:
        """Served first: higher workload priority, then higher confidence, then by name."""
        return (-self.priority, -self.confidence, self.workload)


def interval_confidence(iv: Interval) -> float:
    """Confidence of a forecast from the width of its 80 % interval relative to its median.

    confidence = 1 / (1 + (q0.9 - q0.1) / q0.5). Worked numbers: a median of 2 cores with
    q0.1 = 1.8 and q0.9 = 2.2 gives width 0.2 -> 0.83; q0.1 = 1 and q0.9 = 3 gives
    width 1.0 -> 0.5; an interval four times the median gives 0.2. Scale-free, so a
    64-core job and a 1-core job are compared on the same footing.
    """
    width = max(iv.high - iv.low, 0.0)
    if iv.median <= 0:
        return 1.0 if width == 0 else 0.0
    return 1.0 / (1.0 + width / iv.median)


def forecast_confidence(fc: WorkloadForecast) -> float:
    """The smaller of the CPU and memory confidences: a request is as sure as its least sure part.

    A fallback forecast (predictor unreachable) is capped at 0.3 so model-backed requests
    are served before it.
    """
    conf = min(interval_confidence(fc.cpu), interval_confidence(fc.mem))
    return min(conf, 0.3) if fc.from_fallback else conf


def round_up(value: float, step: float) -> float:
    return math.ceil(value / step - 1e-9) * step


def apply_hysteresis(current: float, target: float, shrink_ratio: float) -> float:
    """Grow at once; shrink only when the target is below current × (1 − shrink_ratio).

    Example with shrink_ratio 0.25: holding 2.0 cores, a target of 1.6 keeps 2.0 (not
    enough below), 1.4 shrinks to 1.4, 2.5 grows to 2.5 immediately.
    """
    if target >= current or current <= 0:
        return target
    return target if target < current * (1.0 - shrink_ratio) else current


def plan_requests(
    forecasts: Sequence[WorkloadForecast],
    policies: Mapping[str, WorkloadPolicy],
    held: Mapping[str, tuple[float, float]],
    spec: AllocatorSpec,
) -> list[ResourceRequest]:
    """One request per forecast, ordered by :attr:`ResourceRequest.sort_key`.

    ``held`` maps workload -> (cpu, mem) currently reserved. Budgets are spent in that
    order: a request that no longer fits the cluster budget becomes an autoscaler-floor
    request (capacity is asked for, nothing is held) rather than being dropped.
    """
    drafts = []
    for fc in forecasts:
        pol = policies.get(fc.workload, WorkloadPolicy())
        b = pol.bounds
        cpu_target = fc.cpu_reserve_q
        mem_target = fc.mem_reserve_q
        reason: Reason = "shadow_lead" if fc.shadow_used else "live_trend"
        # Reactive correction: demand is already above what the forecast would hold.
        if fc.cpu_now > cpu_target or fc.mem_now > mem_target:
            reason = "reactive_correction"
            cpu_target = max(cpu_target, fc.cpu_now)
            mem_target = max(mem_target, fc.mem_now)
        if fc.from_fallback and reason != "reactive_correction":
            reason = "profile_prior" if (b.cpu_min > 0 or b.mem_min > 0) else "live_trend"
        cpu_target = min(max(cpu_target, b.cpu_min), b.cpu_max)
        mem_target = min(max(mem_target, float(b.mem_min)), b.mem_max)
        cur_cpu, cur_mem = held.get(fc.workload, (0.0, 0.0))
        cpu = apply_hysteresis(cur_cpu, round_up(cpu_target, CPU_STEP), spec.hysteresis)
        mem = apply_hysteresis(cur_mem, round_up(mem_target, MEM_STEP), spec.hysteresis)
        conf = forecast_confidence(fc)
        drafts.append(
            ResourceRequest(
                workload=fc.workload,
                issued_at=fc.issued_at,
                needed_at=fc.issued_at + fc.lead_s,
                cpu_expected=fc.cpu.median,
                mem_expected=fc.mem.median,
                cpu=cpu,
                mem=mem,
                cpu_interval=fc.cpu,
                mem_interval=fc.mem,
                confidence=conf,
                priority=pol.priority,
                max_pending_s=pol.max_pending_s,
                realisation="placement_group",
                reason=reason,
            )
        )
    drafts.sort(key=lambda r: r.sort_key)
    out = []
    cpu_left, mem_left = spec.cpu_budget, spec.mem_budget
    for req in drafts:
        realisation: Realisation
        if not spec.enabled:
            realisation = "observe_only"
        elif req.confidence < spec.min_confidence_for_pg or req.cpu > cpu_left or req.mem > mem_left:
            realisation = "autoscaler_floor"
        else:
            realisation = "placement_group"
            cpu_left -= req.cpu
            mem_left -= req.mem
        out.append(replace(req, realisation=realisation))
    return out
