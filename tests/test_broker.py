"""The reservation broker over a fake placement backend: priority, slices (make-before-break), no leaks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pytest

from prae.engine.broker import (
    MAX_SLICES,
    SETTLE_S,
    AllocatorMirror,
    BrokerAllocator,
    ReservationBroker,
    bundle_for,
    bundles_for,
)
from prae.policy.requests import Interval, ResourceRequest
from tests.fakes import FakeClock, FakeFloor, FakePG, FakePlacementBackend

GIB = 1024**3


@dataclass
class InUseBackend(FakePlacementBackend):
    """Knows which groups have something running in them (by name)."""

    busy: set[str] = field(default_factory=set)

    def in_use(self, g: FakePG) -> bool:
        return g.name in self.busy


@dataclass
class DescribingBackend(FakePlacementBackend):
    """Can read a leftover group's bundles, so a restarted broker can adopt it."""

    def bundles(self, g: FakePG) -> list[dict[str, float]]:
        return g.bundles


def req(name, cpu, conf=0.8, prio=0, needed_at=10.0, realisation="placement_group", mem=0.0):
    iv = Interval(cpu, cpu, cpu)
    return ResourceRequest(
        workload=name,
        issued_at=5.0,
        needed_at=needed_at,
        cpu_expected=cpu,
        mem_expected=mem,
        cpu=cpu,
        mem=mem,
        cpu_interval=iv,
        mem_interval=iv,
        confidence=conf,
        priority=prio,
        max_pending_s=None,
        realisation=realisation,
        reason="live_trend",
    )


def ordered(*reqs):
    return sorted(reqs, key=lambda r: r.sort_key)


def test_bundle_for():
    assert bundle_for(1.5, 2 * GIB) == {"CPU": 1.5, "memory": float(2 * GIB)}
    assert bundle_for(0, GIB) == {"memory": float(GIB)}


def test_only_queue_head_waits_in_ray_and_priority_is_ours():
    backend = FakePlacementBackend(capacity=0)  # nothing fits: everything stays pending
    broker = ReservationBroker(backend, FakeFloor(), "p-", max_pending=1)
    broker.apply(ordered(req("low", 1, conf=0.2), req("high", 1, conf=0.9)), now=1.0)
    assert [g.name for g in backend.groups] == ["p-high-0"]
    # still pending in Ray: the low one keeps waiting in our queue, however often we plan
    broker.apply(ordered(req("low", 1, conf=0.2), req("high", 1, conf=0.9)), now=1.5)
    assert [g.name for g in backend.groups] == ["p-high-0"]
    assert list(broker.queue) == ["low"]
    backend.capacity = 8
    broker.apply(ordered(req("low", 1, conf=0.2), req("high", 1, conf=0.9)), now=2.0)
    assert {g.name.split("-")[1] for g in backend.groups} == {"high", "low"}


@dataclass
class SlowBackend(FakePlacementBackend):
    """As on Ray: a group that fits comes up only a few polls after it was created."""

    polls_to_ready: int = 2
    polls: dict[str, int] = field(default_factory=dict)

    def is_ready(self, g: FakePG) -> bool:
        self.polls[g.name] = self.polls.get(g.name, 0) + 1
        return self.polls[g.name] > self.polls_to_ready and super().is_ready(g)


def timed_broker(backend, max_pending=2, budget=1.0):
    """A broker whose waits move a fake clock: (broker, clock, sleeps)."""
    clock = FakeClock(0.0)
    sleeps: list[float] = []

    def sleep(dt: float) -> None:
        sleeps.append(dt)
        clock.advance(dt)

    broker = ReservationBroker(
        backend, None, "p-", max_pending=max_pending, launch_budget_s=budget, clock=clock, sleep=sleep
    )
    return broker, clock, sleeps


def test_a_cold_start_reserves_everything_that_fits_in_one_step():
    """Twelve workloads, room for all: one step, not max_pending per step (~500 steps for a
    cold start of 1000 workloads before)."""
    backend = SlowBackend(capacity=12)
    broker, _, _ = timed_broker(backend, max_pending=2)
    reqs = ordered(*[req(f"w{i:02d}", 1, conf=0.5 + i / 100) for i in range(12)])
    broker.apply(reqs, now=1.0)
    states = [{r["workload"]: r["state"] for r in broker.records()}.get(q.workload) for q in reqs]
    # all launched, in priority order; the last round is still coming up in Ray
    assert not broker.queue
    assert [g.name.split("-")[1] for g in backend.groups] == [r.workload for r in reqs]
    assert states == ["ready"] * 10 + ["pending"] * 2
    broker.apply(reqs, now=2.0)
    assert all(r["state"] == "ready" for r in broker.records())


def test_where_room_runs_out_only_the_queue_head_waits_in_ray():
    backend = SlowBackend(capacity=3)
    broker, clock, sleeps = timed_broker(backend, max_pending=2)
    reqs = ordered(*[req(f"w{i}", 1, conf=0.5 + i / 100) for i in range(6)])
    broker.apply(reqs, now=1.0)
    states = {r["workload"]: r["state"] for r in broker.records()}
    ranked = [r.workload for r in reqs]
    assert [states.get(w) for w in ranked] == ["ready"] * 3 + ["pending"] * 2 + [None]
    assert list(broker.queue) == ranked[5:]
    # the step gave up on the two that do not fit after SETTLE_S, not the whole budget
    assert sum(sleeps) <= SETTLE_S + 0.01
    # next step: they wait in Ray since an earlier step, so it launches nothing and waits for nothing
    sleeps.clear()
    broker.apply(reqs, now=2.0)
    assert sleeps == [] and len(backend.groups) == 5


def test_the_launch_budget_bounds_a_step():
    backend = SlowBackend(capacity=100, polls_to_ready=3)
    broker, clock, sleeps = timed_broker(backend, max_pending=1, budget=0.02)
    broker.apply(ordered(*[req(f"w{i:02d}", 1) for i in range(50)]), now=1.0)
    assert 1 < len(backend.groups) < 50  # more than one group, and stopped by the budget
    assert clock() <= 0.02 + 0.01


def test_ready_before_need_is_recorded():
    backend = FakePlacementBackend()
    broker = ReservationBroker(backend, None, "p-")
    broker.apply([req("a", 1, needed_at=10.0)], now=5.0)
    (rec,) = broker.records()
    assert rec["state"] == "ready" and rec["ready_at"] == 5.0 and rec["in_place_before_need"]
    assert broker.ready_amount("a") == (1, 0.0)


def test_grow_adds_a_slice_and_never_drops_what_is_held():
    backend = FakePlacementBackend(capacity=3)
    broker = ReservationBroker(backend, None, "p-")
    broker.apply([req("a", 2)], now=1.0)
    broker.apply([req("a", 2)], now=2.0)  # unchanged: no new group
    assert len(backend.groups) == 1
    broker.apply([req("a", 4)], now=3.0)  # 2 + 2 > 3: the new slice cannot be ready yet
    old, new = backend.groups
    assert new.bundles == [{"CPU": 2}]  # only the difference is asked for
    assert not old.removed and not new.ready
    assert broker.ready_amount("a") == (2, 0.0)  # still holding the old one meanwhile
    assert broker.held()["a"] == (4, 0.0)
    backend.capacity = 5
    broker.apply([req("a", 4)], now=4.0)
    assert not old.removed and new.ready and broker.ready_amount("a") == (4, 0.0)
    assert broker.ready_group_names("a") == ["p-a-0", "p-a-1"]
    assert broker.resize_summary()["resizes"] == 1


def test_shrink_removes_newest_unused_slices_but_not_below_target():
    backend = InUseBackend(capacity=16)
    broker = ReservationBroker(backend, None, "p-")
    for cpu in (2, 3, 5):  # slices of 2, 1, 2
        broker.apply([req("a", cpu)], now=cpu)
    assert [g.bundles[0]["CPU"] for g in backend.groups] == [2, 1, 2]
    broker.apply(
        [req("a", 2.5)], now=10.0
    )  # drop the newest (2): 3 >= 2.5; dropping the 1 too would go below
    assert [g.removed for g in backend.groups] == [False, False, True]
    assert broker.ready_amount("a") == (3, 0.0)
    backend.busy.update({"p-a-0", "p-a-1"})  # tasks run in both: never remove one
    broker.apply([req("a", 1)], now=11.0)
    assert [g.removed for g in backend.groups] == [False, False, True]
    backend.busy.discard("p-a-0")
    broker.apply([req("a", 1)], now=12.0)  # the 2-core slice is free now: 1 core stays, in use
    assert [g.removed for g in backend.groups] == [True, False, True]
    assert broker.ready_amount("a") == (1, 0.0)
    assert broker.resize_summary()["resizes"] == 4  # two grows, two shrinks


def test_unit_bundles_spread_a_reservation():
    assert bundles_for(3, 3 * GIB, unit_cpu=1) == [{"CPU": 1, "memory": float(GIB)}] * 3
    assert bundles_for(2.5, 0, unit_cpu=1) == [{"CPU": 1}, {"CPU": 1}, {"CPU": 0.5}]
    assert bundles_for(0.5, 0, unit_cpu=1) == [{"CPU": 0.5}]
    backend = FakePlacementBackend()
    broker = ReservationBroker(backend, None, "p-")
    broker.apply([replace(req("a", 3), bundle_cpu=1.0)], now=1.0)
    assert backend.groups[0].bundles == [{"CPU": 1}] * 3


def test_observe_only_records_what_it_would_hold_and_creates_nothing():
    backend = FakePlacementBackend()
    floor = FakeFloor()
    broker = ReservationBroker(backend, floor, "p-")
    broker.apply([req("a", 2, realisation="observe_only")], now=1.0)
    broker.apply([req("a", 2, realisation="observe_only")], now=2.0)
    broker.apply([req("a", 3, realisation="observe_only")], now=3.0)
    assert backend.groups == [] and floor.calls == []  # never touches request_resources
    recs = broker.records()
    assert [r["state"] for r in recs] == ["removed", "observed"] and recs[1]["cpu"] == 3
    assert broker.ready_amount("a") == (
        3,
        0.0,
    )  # what it would hold: the report compares it with use
    broker.release_all(now=4.0)
    assert all(r["state"] == "removed" for r in broker.records())


def test_restarted_broker_adopts_its_predecessors_groups():
    backend = DescribingBackend(capacity=8)
    first = ReservationBroker(backend, None, "p-")
    first.apply([req("a", 2), req("b-x", 1)], now=1.0)
    # the allocator dies; a new one starts on the same cluster
    backend.leftovers = [g for g in backend.groups if not g.removed]
    second = ReservationBroker(backend, None, "p-", adopt_grace_s=5.0)
    assert (second.adopted, second.leaked_removed) == (2, 0)
    second.apply([req("a", 2)], now=2.0)
    assert second.ready_amount("a") == (2, 0.0) and len(backend.groups) == 2  # nothing new created
    assert second.ready_amount("b-x") == (1, 0.0)  # not asked for yet: kept during the grace time
    second.apply([req("a", 2)], now=8.0)
    assert second.ready_amount("b-x") == (0.0, 0.0)  # nobody claimed it: released, nothing leaks
    assert [g.name for g in backend.live()] == ["p-a-0"]
    second.apply([req("a", 3)], now=9.0)
    assert backend.groups[-1].name == "p-a-2"  # numbering continues after the adopted ones


def test_floor_is_reasserted_every_step_and_cleared_once():
    floor = FakeFloor()
    broker = ReservationBroker(FakePlacementBackend(), floor, "p-")
    r = replace(req("a", 2, realisation="autoscaler_floor"), bundle_cpu=1.0)
    broker.apply([r], now=1.0)
    broker.apply([r], now=2.0)  # Ray Data may have replaced it meanwhile: say it again
    assert floor.calls == [[{"CPU": 1}, {"CPU": 1}]] * 2
    broker.apply([], now=3.0)
    broker.apply([], now=4.0)
    assert floor.calls[2:] == [[]]  # ours cleared once; someone else's floor is left alone


def test_release_and_release_all_remove_everything():
    backend = FakePlacementBackend()
    floor = FakeFloor()
    broker = ReservationBroker(backend, floor, "p-")
    broker.apply([req("a", 1), req("b", 1)], now=1.0)
    broker.release("a", now=2.0)
    assert [g.name.split("-")[1] for g in backend.live()] == ["b"]
    broker.release_all(now=3.0)
    assert backend.live() == [] and floor.calls[-1] == []
    assert all(r["removed_at"] is not None for r in broker.records())


def test_floor_requests_and_observe_only_hold_nothing():
    backend = FakePlacementBackend()
    floor = FakeFloor()
    broker = ReservationBroker(backend, floor, "p-")
    broker.apply(
        [req("a", 2, realisation="autoscaler_floor"), req("b", 1, realisation="observe_only")],
        now=1.0,
    )
    assert backend.groups == []
    assert floor.calls[-1] == [{"CPU": 2}]


def test_leftovers_of_a_dead_allocator_are_removed():
    backend = FakePlacementBackend(
        leftovers=[FakePG("p-a-0", [{"CPU": 1}]), FakePG("other-x", [{"CPU": 1}])]
    )
    broker = ReservationBroker(backend, None, "p-")
    assert broker.leaked_removed == 1
    assert backend.leftovers[0].removed and not backend.leftovers[1].removed


def test_zero_request_releases():
    backend = FakePlacementBackend()
    broker = ReservationBroker(backend, None, "p-")
    broker.apply([req("a", 1)], now=1.0)
    broker.apply([replace(req("a", 0), cpu=0.0, mem=0.0)], now=2.0)
    assert backend.live() == []


def test_waiting_higher_rank_preempts_unused_lower_reservation():
    """Capacity 4: 'low' holds 3 CPUs it does not use; 'high' now outranks it under the
    budget (the plan demotes 'low' to the floor) and needs 3. Without pre-emption 'high'
    would wait in Ray behind an idle reservation; with it, 'low' gives its slice back."""
    backend = InUseBackend(capacity=4)
    broker = ReservationBroker(backend, FakeFloor(), "t-")
    broker.apply([req("low", 3.0)], now=0.0)
    assert broker.ready_amount("low") == (3.0, 0.0)
    step = ordered(req("high", 3.0, prio=1), req("low", 3.0, realisation="autoscaler_floor"))
    broker.apply(step, now=1.0)
    assert broker.ready_amount("high") == (3.0, 0.0)  # ready in the same step
    assert broker.ready_amount("low") == (0.0, 0.0)
    (low_rec,) = [r for r in broker.records() if r["workload"] == "low"]
    assert low_rec["state"] == "removed" and low_rec["preempted_by"] == "high"


def test_busy_lower_reservation_is_never_preempted():
    backend = InUseBackend(capacity=4)
    broker = ReservationBroker(backend, FakeFloor(), "t-")
    broker.apply([req("low", 3.0)], now=0.0)
    backend.busy.add(broker.ready_group_names("low")[0])  # its tasks run in it
    broker.apply(ordered(req("high", 3.0, prio=1), req("low", 3.0, realisation="autoscaler_floor")), now=1.0)
    assert broker.ready_amount("low") == (3.0, 0.0)  # kept: removing it would kill its tasks
    assert broker.ready_amount("high") == (0.0, 0.0)  # waits (the floor asks the autoscaler)
    assert [r["state"] for r in broker.records() if r["workload"] == "high"] == ["pending"]


def test_one_big_slice_shrinks_by_replacement_make_before_break():
    """A reservation grown to 2 cores in one slice, then wanted at 0.5: whole-slice removal
    cannot get there, so a 0.5 slice is asked for and the 2-core one is removed only once
    the new one is ready (never less than the target held); asking again while it waits
    creates nothing more."""
    backend = FakePlacementBackend(capacity=2)
    broker = ReservationBroker(backend, None, "p-")
    broker.apply([req("a", 2)], now=1.0)
    broker.apply([req("a", 0.5)], now=2.0)  # 2 + 0.5 > 2: the replacement waits in Ray
    old, new = backend.groups
    assert new.bundles == [{"CPU": 0.5}] and not new.ready and not old.removed
    assert broker.ready_amount("a") == (2, 0.0)  # still held meanwhile
    assert broker.held()["a"] == (0.5, 0.0)  # the planner sees what it will hold
    broker.apply([req("a", 0.5)], now=3.0)
    assert len(backend.groups) == 2  # no second replacement
    backend.capacity = 3
    broker.apply([req("a", 0.5)], now=4.0)
    assert old.removed and new.ready and broker.ready_amount("a") == (0.5, 0.0)
    assert broker.ready_group_names("a") == ["p-a-1"]
    assert [c for _, c in broker.resizes["a"]] == ["shrink"]  # not counted as a grow too


def test_replacement_spares_busy_slices_and_small_gaps():
    backend = InUseBackend(capacity=8)
    broker = ReservationBroker(backend, None, "p-")
    broker.apply([req("a", 2)], now=1.0)
    broker.apply([req("a", 1.8)], now=2.0)  # 2 is within 25 % of 1.8: not worth a new group
    assert len(backend.groups) == 1
    backend.busy.add("p-a-0")
    broker.apply([req("a", 0.5)], now=3.0)  # in use: never replaced (removing it kills its tasks)
    assert len(backend.groups) == 1 and not backend.groups[0].removed
    backend.busy.clear()
    broker.apply([req("a", 0.5)], now=4.0)
    assert [g.removed for g in backend.groups] == [True, False]
    assert broker.ready_amount("a") == (0.5, 0.0)


def test_growing_while_a_replacement_waits_adds_to_what_stays():
    backend = FakePlacementBackend(capacity=2)
    broker = ReservationBroker(backend, None, "p-")
    broker.apply([req("a", 2)], now=1.0)
    broker.apply([req("a", 0.5)], now=2.0)  # replacement of 0.5 waits
    broker.apply([req("a", 1.5)], now=3.0)  # 1.5 wanted: 0.5 will stay, so 1.0 more
    assert [sum(b["CPU"] for b in g.bundles) for g in backend.groups] == [2, 0.5, 1.0]
    assert broker.held()["a"] == (1.5, 0.0)
    backend.capacity = 8
    broker.apply([req("a", 1.5)], now=4.0)
    assert [g.removed for g in backend.groups] == [True, False, False]
    assert broker.ready_amount("a") == (1.5, 0.0)


def test_workloads_with_a_task_unit_are_never_replaced():
    """Their tasks are scheduled into their groups by name: a task sent to a group just
    removed would hang in Ray (ray#18572), so only whole unused groups are removed."""
    backend = FakePlacementBackend(capacity=8)
    broker = ReservationBroker(backend, None, "p-")
    broker.apply([replace(req("a", 2), bundle_cpu=2.0)], now=1.0)
    broker.apply([replace(req("a", 0.5), bundle_cpu=2.0)], now=2.0)
    assert len(backend.groups) == 1 and not backend.groups[0].removed


def ramp(broker, name, steps, unit=0.0, start=1.0):
    """Grow ``name`` by 0.5 core a step (past the hysteresis of any planner); returns the
    ready cores after each step."""
    held = []
    for i in range(steps):
        broker.apply([replace(req(name, start + 0.5 * i), bundle_cpu=unit)], now=float(i))
        held.append(broker.ready_amount(name)[0])
    return held


def test_a_workload_that_keeps_growing_holds_few_slices_make_before_break():
    """Each grow used to add a slice: a workload ramping for an hour held dozens of groups.
    From MAX_SLICES on, a grow is one slice for the whole target replacing the unused ready
    ones, removed only once it is ready: what the workload holds never drops."""
    backend = InUseBackend(capacity=1000)
    broker = ReservationBroker(backend, None, "p-")
    held = ramp(broker, "a", 3 * MAX_SLICES)
    assert all(b >= a for a, b in zip(held, held[1:], strict=False))  # never less than before
    assert held[-1] == 1.0 + 0.5 * (3 * MAX_SLICES - 1)
    assert len(broker.slices["a"]) <= MAX_SLICES
    assert len(backend.live()) == len(broker.slices["a"])  # the replaced groups are gone from Ray
    kinds = [k for _, k in broker.resizes["a"]]
    assert set(kinds) == {"grow"}  # a consolidation grows what it holds: not a shrink


def test_consolidation_keeps_busy_slices_and_spares_task_unit_workloads():
    backend = InUseBackend(capacity=1000)
    broker = ReservationBroker(backend, None, "p-")
    ramp(broker, "a", MAX_SLICES)
    busy = broker.ready_group_names("a")[1]
    backend.busy.add(busy)  # something runs in it: it must survive the consolidation
    broker.apply([req("a", 1.0 + 0.5 * MAX_SLICES)], now=100.0)
    broker.apply([req("a", 1.0 + 0.5 * MAX_SLICES)], now=101.0)
    names = broker.ready_group_names("a")
    assert busy in names and len(names) == 2
    assert broker.ready_amount("a")[0] == 1.0 + 0.5 * MAX_SLICES
    # a workload with a task unit is never replaced: one slice per grow, as before
    other = ReservationBroker(FakePlacementBackend(capacity=1000), None, "q-")
    ramp(other, "t", 2 * MAX_SLICES, unit=0.5)
    assert len(other.slices["t"]) == 2 * MAX_SLICES


def test_the_record_mirror_keeps_what_was_asked_when_an_allocator_adopts_and_marks_what_it_lost():
    def rec(name, **kw):
        base = {"name": name, "workload": "w", "reason": "live_trend", "adopted": False, "state": "pending",
                "needed_at": 10.0, "created_at": 1.0, "ready_at": None, "removed_at": None,
                "in_place_before_need": False, "pending_s": None}
        return {**base, **kw}

    m = AllocatorMirror()
    m.merge([rec("a-0"), rec("a-1"), rec("a-2", state="queued", created_at=None)])
    m.merge([rec("a-0", state="ready", ready_at=4.0, in_place_before_need=True, pending_s=3.0), rec("a-1")])
    # the allocator restarts: it adopts a-0 (ready before) and a-1 (pending before), knows nothing of a-2
    adopted = {"reason": "adopted", "adopted": True, "needed_at": 0.0, "created_at": None}
    m.merge([rec("a-0", state="ready", **adopted), rec("a-1", state="ready", ready_at=12.0, **adopted)])
    final = {r["name"]: r for r in m.final([
        rec("a-0", state="removed", removed_at=20.0, **adopted),
        rec("a-1", state="removed", ready_at=12.0, removed_at=20.0, **adopted),
        rec("a-3", state="removed", ready_at=15.0, removed_at=20.0),  # the new allocator's own
    ])}
    assert final["a-0"]["reason"] == "live_trend" and final["a-0"]["ready_at"] == 4.0
    assert final["a-0"]["in_place_before_need"] and final["a-0"]["state"] == "removed"
    # a-1 became ready only after the restart, after it was needed
    assert final["a-1"]["ready_at"] == 12.0 and not final["a-1"]["in_place_before_need"]
    assert final["a-1"]["pending_s"] == 11.0 and final["a-1"]["needed_at"] == 10.0
    assert final["a-2"]["state"] == "lost" and final["a-3"]["state"] == "removed"


def test_the_mirror_keeps_the_resizes_of_an_allocator_that_died_and_counts_a_repeated_call_once():
    """Before, the run summary's resizes were the last allocator's own: a restart lost
    the count of every resize before it."""
    backend = DescribingBackend(capacity=100)
    mirror = AllocatorMirror()

    def call(alloc, cpu, now, times=1):
        requests = [req("a", cpu), req("b", 1.0 + cpu / 2)]
        seen = mirror.resizes_seen
        for _ in range(times):  # a call run again on a restarted actor (at least once)
            report = alloc.apply_reporting(requests, now, -math.inf, seen)
            mirror.asked(requests, now)
            mirror.take(report, now)

    first = BrokerAllocator(ReservationBroker(backend, None, "m-"))
    for i, cpu in enumerate([1.0, 2.0, 3.0, 2.0]):
        call(first, cpu, 100.0 * i, times=2 if i == 2 else 1)
    before = first.broker.resize_summary()["resizes"]
    assert before >= 3
    assert mirror.resize_summary() == first.broker.resize_summary()  # one allocator: the same
    backend.leftovers = [g for g in backend.groups if not g.removed]
    second = BrokerAllocator(ReservationBroker(backend, None, "m-"))
    for i, cpu in enumerate([4.0, 1.0]):
        call(second, cpu, 400.0 + 100.0 * i, times=2 if i == 1 else 1)
    after = second.broker.resize_summary()["resizes"]
    got = mirror.resize_summary()
    assert got["resizes"] == before + after and after >= 1
    assert got["workloads"]["a"]["hours"] == pytest.approx(500.0 / 3600.0)  # from the first call on


def swing(alloc, steps, since_lag=1, workloads=("a", "b", "c"), step_s=10.0, mirror=None, repeat_every=0):
    """Drive ``alloc`` through ``steps`` calls whose targets swing between 1 and 4 cores, as
    the engine's port does (``since`` = the previous call's time); with ``mirror``, each
    report goes to it, and every ``repeat_every``-th call is run twice (a retried call)."""
    since = -math.inf
    for i in range(steps):
        now = step_s * i
        requests = [req(w, 1.0 + 3.0 * ((i // (2 + j)) % 2), needed_at=now + 5.0) for j, w in enumerate(workloads)]
        times = 2 if repeat_every and i % repeat_every == repeat_every - 1 else 1
        seen = mirror.resizes_seen if mirror is not None else ("", 0)
        for _ in range(times):
            report = alloc.apply_reporting(requests, now, since, seen)
            if mirror is not None:
                mirror.asked(requests, now)
                mirror.take(report, now)
        since = now
    return since


def test_a_long_lived_broker_keeps_the_open_reservations_and_a_window_of_closed_ones():
    """Before, the broker kept every record and every resize it ever made, and scanned all of
    them each call: a long-lived engine's allocator grew without bound."""
    kept = BrokerAllocator(ReservationBroker(FakePlacementBackend(capacity=100), None, "k-"))
    bounded = BrokerAllocator(ReservationBroker(FakePlacementBackend(capacity=100), None, "b-", keep_closed_s=60.0))
    swing(kept, 600)
    swing(bounded, 600)
    everything = kept.broker.records()
    assert len(everything) > 300  # each swing makes and removes groups
    window = [r for r in everything if r["removed_at"] is None or r["removed_at"] >= 5990.0 - 60.0]  # pruned at the last step
    strip = lambda rs: [{k: v for k, v in r.items() if k != "name"} for r in rs]  # noqa: E731
    assert strip(bounded.broker.records()) == strip(window)  # the same, in the same order
    assert len(bounded.broker.history) <= 3 * MAX_SLICES + 3 * 7  # open + 6 steps of closings
    assert len(bounded.broker.resize_log) < 3 * 7
    # the counts are never pruned: the summary is the whole run's
    assert bounded.broker.resize_summary() == kept.broker.resize_summary()
    assert bounded.broker.resize_summary()["resizes"] > 300
    # what a call changed is still reported in full
    since = 5990.0
    assert strip(bounded.broker.changed_records(since)) == strip(kept.broker.changed_records(since))
    with pytest.raises(ValueError, match="keep_closed_s"):
        ReservationBroker(FakePlacementBackend(), None, "x-", keep_closed_s=0.0)


def test_a_mirror_with_a_sink_keeps_the_open_records_and_hands_each_closed_one_over_once():
    sunk: list[dict] = []
    mirror = AllocatorMirror(sunk.extend)
    broker = ReservationBroker(FakePlacementBackend(capacity=100), None, "s-", keep_closed_s=60.0)
    alloc = BrokerAllocator(broker)
    swing(alloc, 600, mirror=mirror, repeat_every=7)
    assert len(mirror.by_name) <= 3 * MAX_SLICES  # the open ones only
    assert len(mirror._sunk) <= 3 * 7  # the names it may still be sent, no more
    names = [r["name"] for r in sunk]
    assert len(names) == len(set(names)) > 300  # each closed record once, retried calls too
    assert all(r["state"] == "removed" for r in sunk)
    alloc.release_all(6000.0)
    rest = mirror.final(alloc.records())
    assert rest and {r["state"] for r in rest} == {"removed"} and len(sunk) == len(names) + len(rest)
    assert not mirror.by_name
    # the same run, everything kept: the same records, the same resizes
    reference = BrokerAllocator(ReservationBroker(FakePlacementBackend(capacity=100), None, "s-"))
    swing(reference, 600, repeat_every=7)  # the retried calls too
    reference.release_all(6000.0)
    assert sorted(r["name"] for r in sunk) == sorted(r["name"] for r in reference.records())
    assert mirror.resize_summary() == reference.broker.resize_summary() and mirror.resizes_missed == 0


def test_a_mirror_that_falls_behind_the_window_counts_the_resizes_it_missed():
    broker = ReservationBroker(FakePlacementBackend(capacity=100), None, "g-", keep_closed_s=60.0)
    alloc = BrokerAllocator(broker)
    swing(alloc, 100)  # nobody mirrors these 1000 s
    mirror = AllocatorMirror()
    report = alloc.apply_reporting([req("a", 2.0)], 1000.0, 990.0, mirror.resizes_seen)
    mirror.take(report, 1000.0)
    got = sum(mirror.resize_counts.values())
    assert mirror.resizes_missed > 0 and mirror.resizes_missed + got == sum(broker.resize_counts.values())


def test_the_store_sink_writes_one_row_per_record(tmp_path):
    from prae.engine.broker import store_sink
    from prae.store.feedback import FeedbackStore

    store = FeedbackStore(tmp_path)
    broker = ReservationBroker(FakePlacementBackend(capacity=100), None, "r-")
    alloc = BrokerAllocator(broker)
    alloc.apply([req("a", 3.0, needed_at=10.0), req("b", 1.0, needed_at=0.0, mem=GIB)], 1.0)
    alloc.release_all(2.0)
    store_sink(store, clock=lambda: 123.0)(alloc.records())
    store.flush()
    rows = sorted(store.read("reservations").to_pylist(), key=lambda r: r["name"])
    assert [(r["workload"], r["state"], r["cpu"], r["bundles"]) for r in rows] == [
        ("a", "removed", 3.0, 1), ("b", "removed", 1.0, 1)
    ]
    assert [r["in_place_before_need"] for r in rows] == [True, False]  # b was needed before it was asked
    assert rows[1]["mem"] == GIB and rows[0]["written_at"] == 123.0 and rows[0]["removed_at"] == 2.0


def test_a_call_reports_only_the_records_that_changed_and_an_adopted_group_once_after_a_restart():
    """Before, every call sent every open record (at 1000 workloads, building them was most of
    the call); the mirror needs only what changed since its last call (``since``: that
    call's time, so a change is sent in its own call and once more in the next)."""
    backend = DescribingBackend(capacity=100)
    alloc = BrokerAllocator(ReservationBroker(backend, None, "c-"))
    steady = [req("a", 2.0), req("b", 1.0)]
    first = alloc.apply_reporting(steady, 10.0, -math.inf)
    assert sorted(r["workload"] for r in first.records) == ["a", "b"]
    assert len(alloc.apply_reporting(steady, 20.0, 10.0).records) == 2  # once more
    assert alloc.apply_reporting(steady, 30.0, 20.0).records == []  # nothing changed
    grown = alloc.apply_reporting([req("a", 3.0), req("b", 1.0)], 40.0, 30.0).records
    assert [(r["workload"], r["cpu"], r["state"]) for r in grown] == [("a", 1.0, "ready")]  # the new slice only
    backend.leftovers = [g for g in backend.groups if not g.removed]
    restarted = BrokerAllocator(ReservationBroker(backend, None, "c-"))
    held = [req("a", 3.0), req("b", 1.0)]
    adopted = restarted.apply_reporting(held, 50.0, 40.0).records
    assert len(adopted) == 3 and all(r["adopted"] for r in adopted)
    assert len(restarted.apply_reporting(held, 60.0, 50.0).records) == 3
    assert restarted.apply_reporting(held, 70.0, 60.0).records == []
    shrunk = restarted.apply_reporting([req("a", 2.0), req("b", 1.0)], 80.0, 70.0).records
    assert [(r["workload"], r["cpu"], r["state"], r["removed_at"]) for r in shrunk] == [("a", 1.0, "removed", 80.0)]
