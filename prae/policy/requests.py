"""Forecasts in, resource requests out: the pure decision layer (no Ray, no clock, no I/O).

The engine hands :func:`plan_requests` one :class:`WorkloadForecast` per workload each tick;
it gets back :class:`ResourceRequest` objects ordered by who is served first
(:func:`prae.policy.priority.serve_rank`). :class:`ReservationPlanner` wraps it with the
memory a tick-by-tick caller needs (what was last asked for, the resize ledger); the live
allocator and the cluster simulator (:mod:`prae.simulate`) both drive it. How a request is
realised (placement group or autoscaler floor) is the broker's business, not this module's.

Each request says why it was made (``reason``):

    live_trend           the model's forecast from the live workload's own telemetry
    shadow_lead          the forecast used the shadow's telemetry (it runs ahead)
    profile_prior        the profile's bounds (a cold-start prior) set the amount, not a forecast
    reactive_correction  usage is already above the forecast: reserve what is used, now
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from prae.config import AllocatorSpec, Bounds
from prae.policy.priority import serve_rank
from prae.policy.resizes import Change, ResizeLedger, ResizeLimits, classify

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
    """What the user's profile says about one workload.

    ``max_pending_s`` is its SLO: the longest it tolerates waiting for resources.
    ``unit_cpu`` is the size of one of its tasks/actors (e.g. its ``resources.cpu``): when
    set, reservations are whole numbers of such units, one placement-group bundle each,
    so that every bundle fits one task and bundles spread over nodes. 0 = one bundle.
    """

    priority: int = 0
    max_pending_s: float | None = None
    bounds: Bounds = field(default_factory=Bounds)
    unit_cpu: float = 0.0


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
    bundle_cpu: float = 0.0  # CPU per bundle (the workload's unit); 0 = one bundle
    change: Change = "new"  # against what was held or last asked for

    @property
    def slo_s(self) -> float | None:
        """The workload's SLO: the longest it tolerates waiting for resources."""
        return self.max_pending_s

    @property
    def sort_key(self) -> tuple[float, float, float, float, str]:
        """Served first: see :func:`prae.policy.priority.serve_rank` (priority, confidence
        band, SLO, need time, name)."""
        return serve_rank(self.priority, self.confidence, self.max_pending_s, self.needed_at, self.workload)


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


def round_cpu(target: float, unit_cpu: float) -> float:
    """Whole units when the workload has one (1.2 cores of 1-core tasks -> 2.0), else
    ``CPU_STEP`` steps (1.31 -> 1.5)."""
    return round_up(target, unit_cpu) if unit_cpu > 0 else round_up(target, CPU_STEP)


def _cpu_cap(cpu_max: float, unit_cpu: float) -> float:
    """The largest amount within ``cpu_max``: whole units when there is a unit that fits."""
    if unit_cpu > 0 and math.isfinite(cpu_max) and cpu_max >= unit_cpu:
        return math.floor(cpu_max / unit_cpu + 1e-9) * unit_cpu
    return cpu_max


def plan_requests(
    forecasts: Sequence[WorkloadForecast],
    policies: Mapping[str, WorkloadPolicy],
    held: Mapping[str, tuple[float, float]],
    spec: AllocatorSpec,
    shrink_allowed: Callable[[str], bool] | None = None,
) -> list[ResourceRequest]:
    """One request per forecast, ordered by :attr:`ResourceRequest.sort_key`.

    ``held`` maps workload -> (cpu, mem) currently reserved (or last asked for): growth
    is taken at once, shrinking only past the hysteresis and when ``shrink_allowed``
    (the resize rate limit, :class:`~prae.policy.resizes.ResizeLedger`) says yes.
    Per-workload bounds cap every amount. The cluster budget is spent in serve order: a
    request that no longer fits it, or whose confidence is below
    ``spec.min_confidence_for_pg``, becomes an autoscaler-floor request (capacity is asked
    for, nothing is held) rather than being dropped. Observe-only (``spec.enabled`` off):
    every request is marked ``observe_only`` and the broker only records it.
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
        if reason != "reactive_correction" and (
            fc.from_fallback or cpu_target < b.cpu_min or mem_target < b.mem_min
        ):
            # No model behind it, or the profile's floor is above the forecast: the
            # amount comes from the profile (when it has a floor at all).
            reason = "profile_prior" if (b.cpu_min > 0 or b.mem_min > 0) else reason
        cpu_target = min(max(cpu_target, b.cpu_min), b.cpu_max)
        mem_target = min(max(mem_target, float(b.mem_min)), b.mem_max)
        cur_cpu, cur_mem = held.get(fc.workload, (0.0, 0.0))
        may_shrink = shrink_allowed is None or shrink_allowed(fc.workload)
        cpu_goal = round_cpu(cpu_target, pol.unit_cpu)
        mem_goal = round_up(mem_target, MEM_STEP)
        if not may_shrink:
            cpu_goal, mem_goal = max(cpu_goal, cur_cpu), max(mem_goal, cur_mem)
        # Bounds cap everything, also what hysteresis would keep and what rounding adds.
        cpu = min(apply_hysteresis(cur_cpu, cpu_goal, spec.hysteresis), _cpu_cap(b.cpu_max, pol.unit_cpu))
        mem = min(apply_hysteresis(cur_mem, mem_goal, spec.hysteresis), b.mem_max)
        conf = forecast_confidence(fc)
        drafts.append(
            {
                "workload": fc.workload,
                "issued_at": fc.issued_at,
                "needed_at": fc.issued_at + fc.lead_s,
                "cpu_expected": fc.cpu.median,
                "mem_expected": fc.mem.median,
                "cpu": cpu,
                "mem": mem,
                "cpu_interval": fc.cpu,
                "mem_interval": fc.mem,
                "confidence": conf,
                "priority": pol.priority,
                "max_pending_s": pol.max_pending_s,
                "reason": reason,
                "bundle_cpu": pol.unit_cpu,
                "change": classify((cur_cpu, cur_mem), (cpu, mem)),
            }
        )
    drafts.sort(
        key=lambda d: serve_rank(d["priority"], d["confidence"], d["max_pending_s"], d["needed_at"], d["workload"])
    )
    out = []
    cpu_left, mem_left = spec.cpu_budget, spec.mem_budget
    for d in drafts:
        realisation: Realisation
        if not spec.enabled:
            realisation = "observe_only"
        elif d["confidence"] < spec.min_confidence_for_pg or d["cpu"] > cpu_left or d["mem"] > mem_left:
            realisation = "autoscaler_floor"
        else:
            realisation = "placement_group"
            cpu_left -= d["cpu"]
            mem_left -= d["mem"]
        out.append(ResourceRequest(realisation=realisation, **d))
    return out


class ReservationPlanner:
    """:func:`plan_requests` with the memory a tick-by-tick caller needs.

    Hysteresis is applied against what was last *asked for* (a reservation still pending
    in Ray counts as held, so a wobbling forecast does not churn it), shrinking is rate
    limited by a :class:`ResizeLedger`, and every change is counted there per
    workload-hour. The live allocator and the cluster simulator both drive this class.
    """

    def __init__(
        self,
        spec: AllocatorSpec,
        policies: Mapping[str, WorkloadPolicy],
        limits: ResizeLimits | None = None,
    ) -> None:
        self.spec = spec
        self.policies = dict(policies)
        self.limits = limits or ResizeLimits()
        self.ledger = ResizeLedger(self.limits)
        self.asked: dict[str, tuple[float, float]] = {}
        self._peaks: dict[str, deque[tuple[float, float, float]]] = {}

    def plan(
        self,
        forecasts: Sequence[WorkloadForecast],
        now: float,
        held: Mapping[str, tuple[float, float]] | None = None,
    ) -> list[ResourceRequest]:
        """``held``: what the broker reports as held; the larger of it and what was last
        asked for is the base of hysteresis."""
        base = dict(self.asked)
        for w, amount in (held or {}).items():
            prev = base.get(w, (0.0, 0.0))
            base[w] = (max(prev[0], amount[0]), max(prev[1], amount[1]))
        if self.limits.peak_hold_s > 0:
            forecasts = [self._peak_held(fc, now) for fc in forecasts]
        requests = plan_requests(
            forecasts, self.policies, base, self.spec, lambda w: self.ledger.shrink_allowed(w, now)
        )
        for req in requests:
            self.ledger.record(req.workload, req.change, now)
            self.asked[req.workload] = (req.cpu, req.mem)
        return requests

    def _peak_held(self, fc: WorkloadForecast, now: float) -> WorkloadForecast:
        """The forecast with its reserve amounts raised to the peak planned within
        ``peak_hold_s`` (what was forecast or used, whichever was higher, each tick)."""
        window = self._peaks.setdefault(fc.workload, deque())
        window.append((now, max(fc.cpu_reserve_q, fc.cpu_now), max(fc.mem_reserve_q, fc.mem_now)))
        while window[0][0] <= now - self.limits.peak_hold_s:
            window.popleft()
        cpu = max(c for _, c, _ in window)
        mem = max(m for _, _, m in window)
        if cpu <= fc.cpu_reserve_q and mem <= fc.mem_reserve_q:
            return fc
        return replace(fc, cpu_reserve_q=max(cpu, fc.cpu_reserve_q), mem_reserve_q=max(mem, fc.mem_reserve_q))

    def forget(self, workload: str, now: float) -> None:
        """The workload finished and its reservation was released."""
        self._peaks.pop(workload, None)
        if self.asked.pop(workload, None) is not None:
            self.ledger.record(workload, "release", now)
