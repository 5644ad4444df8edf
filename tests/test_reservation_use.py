"""On local Ray: the live workload's tasks and actors really run in its reservation.

The broker (with the real Ray backend) reserves; ReservationPlacer finds the groups by
name and schedules into them; what does not fit goes outside (the reactive path); a
group in use is never removed to shrink; a restarted broker adopts its groups; nothing
leaks.
"""

from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
from ray.util.placement_group import placement_group_table  # noqa: E402

from prae.config import AllocatorSpec  # noqa: E402
from prae.engine.actors import ALLOCATOR_ACTOR_OPTIONS, AllocatorService  # noqa: E402
from prae.engine.broker import ReservationBroker  # noqa: E402
from prae.engine.ray_backends import RayPlacementBackend  # noqa: E402
from prae.engine.ray_ports import RayAllocator  # noqa: E402
from prae.engine.reservations_use import ReservationPlacer, reservation_groups, strategy_into  # noqa: E402
from prae.policy.requests import Interval, ResourceRequest  # noqa: E402

pytestmark = pytest.mark.ray
PREFIX = "t-use-"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def no_groups_left_behind():
    """Each test starts with none of this module's groups: one that fails half-way must
    not make the next one fail too (the tests count groups by prefix)."""
    yield
    for name in live_names(PREFIX):
        ray.util.remove_placement_group(ray.util.get_placement_group(name))


def req(name: str, cpu: float, unit: float = 1.0) -> ResourceRequest:
    iv = Interval(cpu, cpu, cpu)
    return ResourceRequest(
        workload=name,
        issued_at=0.0,
        needed_at=5.0,
        cpu_expected=cpu,
        mem_expected=0.0,
        cpu=cpu,
        mem=0.0,
        cpu_interval=iv,
        mem_interval=iv,
        confidence=0.9,
        priority=0,
        max_pending_s=None,
        realisation="placement_group",
        reason="live_trend",
        bundle_cpu=unit,
    )


def wait_ready(
    broker: ReservationBroker, workload: str, cpu: float, now: float, timeout_s: float = 30
) -> None:
    deadline = time.time() + timeout_s
    while broker.ready_amount(workload)[0] < cpu:
        assert time.time() < deadline, broker.records()
        time.sleep(0.1)
        broker.apply([req(workload, cpu)], now)


def live_names(prefix: str) -> set[str]:
    return {
        i["name"]
        for i in placement_group_table().values()
        if (i.get("name") or "").startswith(prefix) and i["state"] != "REMOVED"
    }


@ray.remote
def where(hold_s: float = 0.0) -> str | None:
    time.sleep(hold_s)
    return ray.get_runtime_context().get_placement_group_id()


@ray.remote
class Worker:
    def group(self) -> str | None:
        return ray.get_runtime_context().get_placement_group_id()


def test_tasks_and_actors_run_in_the_reservation_and_overflow_goes_outside():
    broker = ReservationBroker(RayPlacementBackend(), None, PREFIX)
    broker.apply([req("etl", 2)], now=1.0)
    wait_ready(broker, "etl", 2, now=1.0)
    (name,) = broker.ready_group_names("etl")
    ((pg, bundles),) = reservation_groups(PREFIX, "etl")
    assert bundles == [{"CPU": 1.0}, {"CPU": 1.0}]  # one bundle per 1-core unit

    # by name, as the broker exposes it
    assert (
        ray.get(where.options(num_cpus=1, scheduling_strategy=strategy_into(name)).remote())
        == pg.id.hex()
    )

    placer = ReservationPlacer(PREFIX, "etl")
    refs = [placer.submit(where, 2.0, num_cpus=1) for _ in range(3)]
    groups = ray.get(refs)
    assert groups[:2] == [pg.id.hex()] * 2  # the reserved bundles are used ...
    assert groups[2] is None  # ... and the third, beyond the forecast, is not held back
    assert (placer.placed, placer.overflow) == (2, 1)

    actor = placer.create_actor(Worker, num_cpus=1)  # the tasks are done: room again
    assert ray.get(actor.group.remote()) == pg.id.hex()
    ray.kill(actor)
    placer.forget(actor)
    broker.release_all(now=2.0)
    time.sleep(0.5)
    assert live_names(PREFIX) == set()


def test_shrink_spares_groups_in_use_and_growth_is_seen_by_the_placer():
    broker = ReservationBroker(RayPlacementBackend(), None, PREFIX)
    broker.apply([req("train", 1)], now=1.0)
    wait_ready(broker, "train", 1, now=1.0)
    broker.apply([req("train", 3)], now=2.0)  # grow: a second group for 2 more cores
    wait_ready(broker, "train", 3, now=2.0)
    placer = ReservationPlacer(PREFIX, "train", refresh_s=0.0)
    assert placer.reserved() == (0.0, 0.0)
    placer.refresh(force=True)
    assert placer.reserved()[0] == 3.0

    first, second = broker.ready_group_names("train")
    busy = where.options(num_cpus=1, scheduling_strategy=strategy_into(second, 0)).remote(4.0)
    time.sleep(1.5)  # let the raylet report the bundle as taken
    broker.apply([req("train", 1)], now=3.0)  # shrink to 1: the 2-core group is in use ...
    time.sleep(0.5)
    assert live_names(PREFIX) == {second}  # ... so the unused 1-core one goes instead
    assert broker.ready_amount("train") == (2.0, 0.0)
    ray.get(busy)
    time.sleep(1.5)
    broker.apply([req("train", 1)], now=4.0)  # never below the target: 2 cores stay
    # (a workload with a task unit schedules into its groups by name: never replaced)
    assert live_names(PREFIX) == {second}
    ((pg, _),) = reservation_groups(PREFIX, "train")
    assert (
        ray.get(placer.submit(where, num_cpus=1)) == pg.id.hex()
    )  # the placer dropped the removed one
    broker.release_all(now=5.0)


def test_restarted_broker_adopts_its_groups_and_nothing_leaks():
    first = ReservationBroker(RayPlacementBackend(), None, PREFIX)
    first.apply([req("svc", 2), req("gone", 1)], now=1.0)
    wait_ready(first, "svc", 2, now=1.0)
    names = live_names(PREFIX)
    assert len(names) == 2
    # the allocator actor dies and restarts: a new broker, same prefix, same cluster
    second = ReservationBroker(RayPlacementBackend(), None, PREFIX, adopt_grace_s=0.0)
    assert second.adopted == 2
    second.apply([req("svc", 2)], now=10.0)
    assert second.ready_amount("svc") == (2.0, 0.0)
    time.sleep(0.5)
    assert live_names(PREFIX) == {n for n in names if "-svc-" in n}  # the unclaimed one is gone
    second.release_all(now=11.0)
    time.sleep(0.5)
    assert live_names(PREFIX) == set()


def test_placer_from_env(monkeypatch):
    monkeypatch.delenv("PRAE_RESERVATION_PREFIX", raising=False)
    assert ReservationPlacer.from_env() is None  # not started under PRAE: schedule as usual
    monkeypatch.setenv("PRAE_RESERVATION_PREFIX", PREFIX)
    monkeypatch.setenv("PRAE_WORKLOAD", "etl")
    placer = ReservationPlacer.from_env()
    assert placer is not None and (placer.prefix, placer.workload) == (PREFIX, "etl")


def test_a_task_stranded_in_a_removed_group_is_cancelled_and_resubmitted():
    """A task sent to a group that goes before the task starts waits in Ray for ever
    (ray#18572); ``recover`` cancels it and submits it again."""
    broker = ReservationBroker(RayPlacementBackend(), None, PREFIX)
    broker.apply([req("strand", 64)], now=1.0)  # more than this 8-CPU cluster: stays pending
    placer = ReservationPlacer(PREFIX, "strand", refresh_s=0.0)
    ref = placer.submit(where, num_cpus=1)  # into the pending group: the reservation is on its way
    assert (placer.placed, placer.overflow) == (1, 0)
    assert placer.recover(grace_s=0.0) == []  # its group is still there: nothing to do
    broker.release_all(now=2.0)  # e.g. the forecast fell before the group was placed
    done, _ = ray.wait([ref], timeout=3.0)
    assert not done  # stranded: a ray.get on it would never return

    assert placer.recover(grace_s=60.0) == []  # the group went just now: within the grace
    swapped = placer.recover(grace_s=0.0)
    assert [old for old, _ in swapped] == [ref]
    new = swapped[0][1]
    assert ray.get(new, timeout=60) is None  # ran, outside any group (none is left)
    assert (placer.placed, placer.overflow, placer.recovered) == (0, 1, 1)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=30)  # the stranded one is gone from Ray's queue
    assert placer.recover(grace_s=0.0) == []


def test_a_finished_task_is_not_resubmitted_when_its_group_goes():
    broker = ReservationBroker(RayPlacementBackend(), None, PREFIX)
    wait_ready(broker, "done", 1, now=1.0)
    placer = ReservationPlacer(PREFIX, "done", refresh_s=0.0)
    ref = placer.submit(where, num_cpus=1)
    assert ray.get(ref, timeout=60) is not None  # ran in the group
    broker.release_all(now=2.0)
    time.sleep(0.5)
    assert placer.recover(grace_s=0.0) == []
    assert placer.recovered == 0


def test_a_cold_start_places_every_group_that_fits_in_one_step():
    """Forty 0.1-core workloads on this 8-CPU cluster: one step launches them all, and
    they are CREATED by the next (max_pending groups per step before: 20 steps)."""
    broker = ReservationBroker(RayPlacementBackend(), None, PREFIX, max_pending=2)
    reqs = [req(f"cold{i:02d}", 0.1, unit=0.1) for i in range(40)]
    broker.apply(reqs, now=1.0)
    assert not broker.queue
    assert len(live_names(PREFIX)) == 40
    deadline = time.time() + 30
    while sum(broker.ready_amount(r.workload)[0] for r in reqs) < 4.0 - 1e-6:  # CREATED in Ray
        assert time.time() < deadline, broker.records()
        time.sleep(0.05)
        broker.apply(reqs, now=2.0)
    assert len(live_names(PREFIX)) == 40  # no group added while they came up
    # and where it does not fit: the queue's head only waits in Ray, the rest in our queue
    big = [req(f"big{i}", 6.0) for i in range(3)]
    broker.apply(reqs + big, now=3.0)
    assert len(broker.queue) == 1 and broker.pending_count() == 2
    broker.release_all(now=4.0)


def test_a_ramping_workload_is_consolidated_on_ray_without_holding_less():
    """Twelve grows of 0.25 core: from MAX_SLICES groups on, one group for the whole target
    replaces the unused ones once it is CREATED; Ray ends with few groups, none leaked."""
    from prae.engine.broker import MAX_SLICES

    broker = ReservationBroker(RayPlacementBackend(), None, PREFIX)
    held = []
    for i in range(12):
        cpu = 0.25 * (i + 1)
        deadline = time.time() + 30
        while True:  # a plain process (no task unit): the only kind ever consolidated
            broker.apply([req("ramp", cpu, unit=0.0)], now=float(i))
            held.append(broker.ready_amount("ramp")[0])
            if held[-1] >= cpu or time.time() > deadline:
                break
            time.sleep(0.05)
    assert all(b >= a for a, b in zip(held, held[1:], strict=False))  # never less than before
    assert held[-1] == pytest.approx(3.0)
    assert len(live_names(PREFIX)) == len(broker.slices["ramp"]) <= MAX_SLICES
    broker.release_all(now=20.0)


class SlowAllocator(AllocatorService):
    """The allocator actor's class, with time after ``apply`` has done its work and before
    it returns: the window in which this test kills it."""

    def apply(self, requests, now):  # type: ignore[no-untyped-def]
        held = super().apply(requests, now)
        time.sleep(1.0)
        return held


def test_an_allocator_killed_mid_call_is_restarted_and_the_call_returns_without_duplicates():
    actor = ray.remote(**ALLOCATOR_ACTOR_OPTIONS)(SlowAllocator).remote(
        AllocatorSpec(), PREFIX, own_floor=False
    )
    ray.get(actor.records.remote())  # constructed
    call = actor.apply.remote([req("svc", 2)], 1.0)
    time.sleep(0.5)  # inside the sleep: the groups are made, the call has not returned
    made = live_names(PREFIX)
    assert len(made) == 1, made
    ray.kill(actor, no_restart=False)
    held = ray.get(call, timeout=60)  # run again on the restarted actor, not RayActorError
    assert held["svc"][0] == 2.0, held
    # the restarted broker adopted the group the killed call made instead of making another
    assert live_names(PREFIX) == made
    assert ray.get(actor.leaked_removed.remote()) == 0
    ray.get(actor.release_all.remote(2.0))
    time.sleep(0.5)
    assert live_names(PREFIX) == set()
    ray.kill(actor)


def test_the_engines_records_of_reservations_survive_the_allocator_dying():
    """Before, a restarted allocator's records started empty: the run summary showed the
    group it adopted as 'adopted', without what was asked for, when, or whether it was
    ready in time. The engine's port now mirrors the records call by call."""
    actor = ray.remote(**ALLOCATOR_ACTOR_OPTIONS)(SlowAllocator).remote(AllocatorSpec(), PREFIX, own_floor=False)
    port = RayAllocator(None, PREFIX, actor=actor)  # type: ignore[arg-type]
    deadline = time.time() + 60
    now = 1.0
    while port.apply([req("svc", 2)], now).get("svc", (0.0, 0.0))[0] < 2.0:
        assert time.time() < deadline, port.records()
        now += 1.0
    before = {r["name"]: r for r in port.records()}
    assert len(before) == 1
    (name, first), = before.items()
    assert first["reason"] == "live_trend" and first["state"] == "ready" and first["in_place_before_need"]
    ray.kill(actor, no_restart=False)
    assert port.apply([req("svc", 2)], now + 1.0)["svc"][0] == 2.0  # on the restarted actor
    assert any(r["adopted"] for r in ray.get(actor.records.remote()))  # it adopted the group
    port.release_all(now + 2.0)
    after = port.records()
    assert [r["name"] for r in after] == [name]  # one group, one record
    rec = after[0]
    assert rec["reason"] == "live_trend" and not rec["adopted"]  # what was asked for, kept
    assert rec["ready_at"] == first["ready_at"] and rec["in_place_before_need"]
    assert rec["state"] == "removed" and rec["removed_at"] == now + 2.0
    assert live_names(PREFIX) == set()
    ray.kill(actor)


def test_the_engines_count_of_resizes_survives_the_allocator_dying():
    """Before, the run summary asked the allocator for its resizes: a restarted one had
    counted none."""
    actor = ray.remote(**ALLOCATOR_ACTOR_OPTIONS)(SlowAllocator).remote(AllocatorSpec(), PREFIX, own_floor=False)
    port = RayAllocator(None, PREFIX, actor=actor)  # type: ignore[arg-type]
    deadline = time.time() + 60
    now = 1.0
    for cpu in (1.0, 2.0):  # hold 1, then grow to 2: a resize
        while port.apply([req("svc", cpu)], now).get("svc", (0.0, 0.0))[0] < cpu:
            assert time.time() < deadline, port.records()
            now += 1.0
    before = port.resize_summary()
    assert before["resizes"] >= 1 and before == ray.get(actor.resize_summary.remote())
    ray.kill(actor, no_restart=False)
    assert port.apply([req("svc", 2.0)], now + 1.0)["svc"][0] == 2.0  # on the restarted actor
    assert ray.get(actor.resize_summary.remote())["resizes"] == 0  # it has counted none itself
    assert port.resize_summary()["resizes"] == before["resizes"]
    port.release_all(now + 2.0)
    assert live_names(PREFIX) == set()
    ray.kill(actor)
