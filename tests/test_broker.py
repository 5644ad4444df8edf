"""The reservation broker over a fake placement backend: priority, make-before-break, no leaks."""

from __future__ import annotations

from dataclasses import replace

from prae.engine.broker import ReservationBroker, bundle_for
from prae.policy.requests import Interval, ResourceRequest
from tests.fakes import FakeFloor, FakePG, FakePlacementBackend

GIB = 1024**3


def req(name, cpu, conf=0.8, prio=0, needed_at=10.0, realisation="placement_group", mem=0.0):
    iv = Interval(cpu, cpu, cpu)
    return ResourceRequest(
        workload=name, issued_at=5.0, needed_at=needed_at, cpu_expected=cpu, mem_expected=mem, cpu=cpu, mem=mem,
        cpu_interval=iv, mem_interval=iv, confidence=conf, priority=prio, max_pending_s=None,
        realisation=realisation, reason="live_trend",
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
    assert list(broker.queue) == ["low"]
    backend.capacity = 8
    broker.apply(ordered(req("low", 1, conf=0.2), req("high", 1, conf=0.9)), now=2.0)
    assert {g.name.split("-")[1] for g in backend.groups} == {"high", "low"}


def test_ready_before_need_is_recorded():
    backend = FakePlacementBackend()
    broker = ReservationBroker(backend, None, "p-")
    broker.apply([req("a", 1, needed_at=10.0)], now=5.0)
    (rec,) = broker.records()
    assert rec["state"] == "ready" and rec["ready_at"] == 5.0 and rec["in_place_before_need"]
    assert broker.ready_amount("a") == (1, 0.0)


def test_resize_is_make_before_break():
    backend = FakePlacementBackend(capacity=3)
    broker = ReservationBroker(backend, None, "p-")
    broker.apply([req("a", 2)], now=1.0)
    broker.apply([req("a", 2)], now=2.0)  # unchanged: no new group
    assert len(backend.groups) == 1
    broker.apply([req("a", 3)], now=3.0)  # 2 + 3 > 3: the new one cannot be ready yet
    old, new = backend.groups
    assert not old.removed and not new.ready
    assert broker.ready_amount("a") == (2, 0.0)  # still holding the old one meanwhile
    backend.capacity = 5
    broker.apply([req("a", 3)], now=4.0)
    assert old.removed and new.ready and broker.ready_amount("a") == (3, 0.0)


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
    broker.apply([req("a", 2, realisation="autoscaler_floor"), req("b", 1, realisation="observe_only")], now=1.0)
    assert backend.groups == []
    assert floor.calls[-1] == [{"CPU": 2}]


def test_leftovers_of_a_dead_allocator_are_removed():
    backend = FakePlacementBackend(leftovers=[FakePG("p-a-0", [{"CPU": 1}]), FakePG("other-x", [{"CPU": 1}])])
    broker = ReservationBroker(backend, None, "p-")
    assert broker.leaked_removed == 1
    assert backend.leftovers[0].removed and not backend.leftovers[1].removed


def test_zero_request_releases():
    backend = FakePlacementBackend()
    broker = ReservationBroker(backend, None, "p-")
    broker.apply([req("a", 1)], now=1.0)
    broker.apply([replace(req("a", 0), cpu=0.0, mem=0.0)], now=2.0)
    assert backend.live() == []
