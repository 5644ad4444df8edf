"""PRAE vs reactive-only on Ray's fake autoscaling cluster: does acting early remove waiting?

One *arm* starts its own fake autoscaling cluster (:mod:`prae.testing.fake_cluster`, node
start-up delay modelled in the provider), runs a workload whose demand grows in steps, and
measures how long the demand waited for resources:

- the workload is ``units``: 1-CPU tasks, one per unit of demand, each submitted when its
  unit of demand starts and holding its CPU until the unit ends. A unit's wait is the time
  from submission until the task starts running; ``pending_s`` sums them.
- ``reactive``: tasks are submitted plainly. Ray's autoscaler sees them pending and adds
  nodes, which join after the start-up delay.
- ``prae``: every tick, a forecast for ``lead_s`` ahead goes through the real policy
  (:class:`~prae.policy.requests.ReservationPlanner`) and broker
  (:class:`~prae.engine.broker.ReservationBroker` with the Ray backends): placement groups
  of 1-CPU bundles, only the queue head pending, the autoscaler floor owned by the broker.
  The tasks go *into* the reserved bundles (:class:`~prae.engine.reservations_use.ReservationPlacer`);
  what does not fit goes outside, to the reactive path.

The forecast comes from a shadow that runs ``lead_s`` ahead of the live workload (as a
progress-aligned shadow on a smaller data set does): it reads the demand the live run will
have at ``t + lead_s``. So this proof tests acting early through Ray -- placement groups,
priority queue, autoscaler, start-up delay, tasks in bundles -- not forecast accuracy,
which the backtest and the cluster simulator measure on real traces.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from prae.config import AllocatorSpec
from prae.policy.requests import Interval, ReservationPlanner, WorkloadForecast, WorkloadPolicy
from prae.testing.fake_cluster import FakeAutoscalingCluster, FakeNodeType

WORKLOAD = "stepped"


@dataclass(frozen=True)
class ProofConfig:
    steps: tuple[tuple[float, int], ...] = ((0.0, 1), (30.0, 3), (60.0, 5), (90.0, 2))  # (t s, units)
    duration_s: float = 110.0
    startup_delay_s: float = 15.0  # modelled boot time of a node, on top of the fake node's own ~2-5 s
    lead_s: float = 27.0  # how far ahead the shadow runs: boot delay + fake start + scheduling
    node_cpus: int = 2
    max_nodes: int = 4
    head_cpus: int = 1
    tick_s: float = 1.0
    idle_timeout_s: float = 8.0

    def demand(self, t: float) -> int:
        """Units of demand at time t (seconds since the workload started)."""
        level = 0
        for start, units in self.steps:
            if t >= start:
                level = units
        return level if t < self.duration_s else 0

    def unit_intervals(self) -> list[tuple[float, float]]:
        """(start, end) of every unit of demand: unit k runs while demand > k."""
        edges = sorted({0.0, self.duration_s, *(s for s, _ in self.steps if s < self.duration_s)})
        out: list[tuple[float, float]] = []
        open_at: dict[int, float] = {}
        for a in edges:
            level = self.demand(a)
            for k in list(open_at):
                if k >= level:
                    out.append((open_at.pop(k), a))
            for k in range(level):
                open_at.setdefault(k, a)
        out.extend((start, self.duration_s) for start in open_at.values())
        return sorted(out)


@dataclass
class ArmResult:
    arm: str
    pending_s: float  # unit-seconds the demand waited for resources
    units: int
    waits: list[float] = field(default_factory=list)
    in_reservation: int = 0  # units that ran inside a reserved bundle
    reserved_cpu_s: float = 0.0
    used_reserved_cpu_s: float = 0.0
    reservations: list[dict[str, Any]] = field(default_factory=list)
    launches: list[dict[str, Any]] = field(default_factory=list)
    resizes: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def reserved_unused_share(self) -> float:
        if self.reserved_cpu_s <= 0:
            return math.nan
        return max(0.0, 1.0 - self.used_reserved_cpu_s / self.reserved_cpu_s)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reserved_unused_share"] = self.reserved_unused_share
        return d


def _shadow_forecast(cfg: ProofConfig, t: float, issued_at: float, now_units: int) -> WorkloadForecast:
    """What the shadow, ``lead_s`` ahead, says the live run will need up to t + lead_s: the
    peak over the lead, since a reservation made now must also cover what comes before
    its need time (a point forecast at the lead alone would let go of a step that comes
    sooner, e.g. when the job's end is in sight)."""
    edges = [t + cfg.lead_s, *(s for s, _ in cfg.steps if t < s <= t + cfg.lead_s)]
    ahead = float(max(cfg.demand(x) for x in edges))
    iv = Interval(ahead, ahead, ahead)
    zero = Interval(0.0, 0.0, 0.0)
    return WorkloadForecast(
        workload=WORKLOAD, issued_at=issued_at, lead_s=cfg.lead_s, cpu=iv, mem=zero,
        cpu_reserve_q=ahead, mem_reserve_q=0.0, cpu_now=float(now_units), mem_now=0.0, shadow_used=True,
    )


def run_arm(arm: str, cfg: ProofConfig, prefix: str = "proof-") -> ArmResult:
    """One arm on a fresh fake autoscaling cluster; stops only that cluster's processes."""
    import ray

    if arm not in ("prae", "reactive"):
        raise ValueError(f"arm must be 'prae' or 'reactive', got {arm!r}")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = FakeAutoscalingCluster(
        [FakeNodeType("cpu2", cfg.node_cpus, cfg.max_nodes)],
        head_cpus=cfg.head_cpus,
        startup_delay_s=cfg.startup_delay_s,
        idle_timeout_s=cfg.idle_timeout_s,
    )
    t_wall = time.time()
    cluster.start()
    try:
        ray.init(address=cluster.address, log_to_driver=False, namespace="prae-proof")
        try:
            result = _drive(arm, cfg, prefix)
        finally:
            ray.shutdown()
        result.launches = cluster.launches()
    finally:
        cluster.stop()
    result.wall_s = time.time() - t_wall
    return result


def _drive(arm: str, cfg: ProofConfig, prefix: str) -> ArmResult:
    import ray

    from prae.engine.broker import ReservationBroker
    from prae.engine.ray_backends import RayCapacityFloor, RayPlacementBackend
    from prae.engine.reservations_use import ReservationPlacer

    @ray.remote(num_cpus=1, max_retries=0)
    def unit(end_ts: float) -> tuple[float, str | None]:
        started = time.time()
        time.sleep(max(0.0, end_ts - time.time()))
        return started, ray.get_runtime_context().get_placement_group_id()

    broker = planner = placer = None
    if arm == "prae":
        res_prefix = f"{prefix}res-"
        broker = ReservationBroker(RayPlacementBackend(), RayCapacityFloor(), res_prefix, max_pending=2)
        planner = ReservationPlanner(
            AllocatorSpec(reserve_quantile=0.9, hysteresis=0.25),
            {WORKLOAD: WorkloadPolicy(unit_cpu=1.0, max_pending_s=5.0)},
        )
        placer = ReservationPlacer(res_prefix, WORKLOAD, refresh_s=0.0)
        # The allocator plans before the workload's first task: one tick ahead of t = 0.
        broker.apply(planner.plan([_shadow_forecast(cfg, 0.0, time.time(), 0)], time.time()), time.time())
        deadline = time.time() + 15
        while broker.ready_amount(WORKLOAD)[0] < cfg.demand(0.0) and time.time() < deadline:
            time.sleep(0.2)
            broker.apply(planner.plan([_shadow_forecast(cfg, 0.0, time.time(), 0)], time.time()), time.time())

    intervals = cfg.unit_intervals()
    t0 = time.time()
    submitted: list[tuple[float, Any]] = []
    next_unit = 0
    next_plan = t0
    while True:
        now = time.time()
        t = now - t0
        while next_unit < len(intervals) and intervals[next_unit][0] <= t:
            end_ts = t0 + intervals[next_unit][1]
            if placer is not None:
                ref = placer.submit(unit, end_ts, num_cpus=1)
            else:
                ref = unit.remote(end_ts)
            submitted.append((now, ref))
            next_unit += 1
        if broker is not None and planner is not None and now >= next_plan:
            fc = _shadow_forecast(cfg, t, now, cfg.demand(t))
            broker.apply(planner.plan([fc], now, held=broker.held()), now)
            next_plan = now + cfg.tick_s
        if t >= cfg.duration_s:
            break
        time.sleep(0.05)
    t_end = time.time()
    # Every unit has ended (or ends now) before the reservations go: removing a
    # placement group kills what still runs in it.
    outcomes = ray.get([ref for _, ref in submitted])
    if broker is not None:
        broker.release_all(time.time())

    waits, inside, used_reserved = [], 0, 0.0
    for (sub_at, _ref), (_a, b), (started, pg) in zip(submitted, intervals, outcomes, strict=True):
        end = t0 + b
        waits.append(max(0.0, min(started, end) - sub_at))
        if pg:
            inside += 1
            used_reserved += max(0.0, end - started)
    result = ArmResult(arm, sum(waits), len(waits), waits, inside)
    if broker is not None:
        result.reservations = broker.records()
        result.resizes = broker.resize_summary()
        result.used_reserved_cpu_s = used_reserved
        result.reserved_cpu_s = sum(
            r["cpu"] * max(0.0, min(r["removed_at"] or t_end, t_end) - max(r["ready_at"], t0))
            for r in result.reservations
            if r["ready_at"] is not None
        )
    return result


def run_proof(cfg: ProofConfig, arms: Sequence[str] = ("prae", "reactive")) -> dict[str, Any]:
    """Both arms, one after the other, each on its own fresh cluster."""
    results = {arm: run_arm(arm, cfg) for arm in arms}
    out: dict[str, Any] = {"config": asdict(cfg), "arms": {a: r.as_dict() for a, r in results.items()}}
    if "prae" in results:
        out["pending_s_prae"] = round(results["prae"].pending_s, 2)
        out["reserved_unused_share_prae"] = round(results["prae"].reserved_unused_share, 3)
    if "reactive" in results:
        out["pending_s_reactive"] = round(results["reactive"].pending_s, 2)
    if "prae" in results and "reactive" in results and results["reactive"].pending_s > 0:
        out["pending_ratio"] = round(results["prae"].pending_s / results["reactive"].pending_s, 3)
    return out
