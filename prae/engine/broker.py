"""The reservation broker: turns prioritised requests into placement groups, and back.

Ray keeps no priority among pending placement groups and does not even serve them FIFO
(ray#21797, ray#47760), so priority lives here: requests wait in *our* queue, ordered by
:attr:`ResourceRequest.sort_key`, and only the head (``max_pending_pgs`` of them) waits
inside Ray. Resizes are make-before-break: the new group is created, and the old one is
removed only once the new one is ready, so a workload never drops to nothing in between.

The broker is a plain class over two small ports, so it is tested with fakes and hosted
by a thin Ray actor (:mod:`prae.engine.actors`) in production.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from prae.policy.requests import ResourceRequest


class PlacementBackend(Protocol):
    def create(self, name: str, bundles: list[dict[str, float]]) -> Any: ...
    def is_ready(self, handle: Any) -> bool: ...
    def remove(self, handle: Any) -> None: ...
    def list_existing(self, prefix: str) -> list[tuple[str, Any]]: ...


class CapacityFloor(Protocol):
    """The autoscaler floor (``request_resources``). Exactly one broker may own it."""

    def set_floor(self, bundles: list[dict[str, float]]) -> None: ...


@dataclass
class Reservation:
    name: str
    workload: str
    cpu: float
    mem: float
    requested_at: float
    needed_at: float
    confidence: float
    reason: str
    state: str = "queued"  # queued -> pending -> ready -> removed
    created_at: float | None = None  # handed to Ray
    ready_at: float | None = None
    removed_at: float | None = None
    handle: Any = None

    @property
    def in_place_before_need(self) -> bool:
        return self.ready_at is not None and self.ready_at <= self.needed_at

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("handle")
        d["in_place_before_need"] = self.in_place_before_need
        return d


def bundle_for(cpu: float, mem: float) -> dict[str, float]:
    bundle: dict[str, float] = {}
    if cpu > 0:
        bundle["CPU"] = round(cpu, 4)
    if mem > 0:
        bundle["memory"] = float(int(mem))
    return bundle


class ReservationBroker:
    def __init__(
        self,
        backend: PlacementBackend,
        floor: CapacityFloor | None,
        prefix: str,
        max_pending: int = 2,
    ) -> None:
        self.backend = backend
        self.floor = floor
        self.prefix = prefix
        self.max_pending = max_pending
        self._ids = itertools.count()
        self.active: dict[str, Reservation] = {}  # workload -> the reservation it holds
        self.replacing: dict[str, Reservation] = {}  # workload -> a newer one not yet ready
        self.queue: dict[str, Reservation] = {}  # workload -> waiting for a pending slot
        self.history: list[Reservation] = []
        self._floor: list[dict[str, float]] | None = None
        self.leaked_removed = self._remove_leftovers()

    def _remove_leftovers(self) -> int:
        """A previous allocator that died left named groups behind: remove them, leak nothing."""
        leftovers = self.backend.list_existing(self.prefix)
        for _, handle in leftovers:
            self.backend.remove(handle)
        return len(leftovers)

    # ------------------------------------------------------------------ queries

    def held(self) -> dict[str, tuple[float, float]]:
        """workload -> (cpu, mem) of what it holds or is about to hold."""
        out = {w: (r.cpu, r.mem) for w, r in self.active.items()}
        out.update({w: (r.cpu, r.mem) for w, r in self.replacing.items()})
        out.update({w: (r.cpu, r.mem) for w, r in self.queue.items()})
        return out

    def ready_amount(self, workload: str) -> tuple[float, float]:
        r = self.active.get(workload)
        return (r.cpu, r.mem) if r and r.state == "ready" else (0.0, 0.0)

    def records(self) -> list[dict[str, Any]]:
        return [r.record() for r in self.history]

    def pending_count(self) -> int:
        return sum(1 for r in self._live() if r.state == "pending")

    def _live(self) -> list[Reservation]:
        return [*self.active.values(), *self.replacing.values()]

    # ------------------------------------------------------------------ the step

    def apply(self, requests: Sequence[ResourceRequest], now: float) -> None:
        """One planning step: refresh Ray's view, take the new requests, launch from the queue."""
        self._refresh(now)
        floor: list[dict[str, float]] = []
        for req in requests:  # already in priority order
            if req.realisation == "observe_only":
                continue
            if req.realisation == "autoscaler_floor":
                floor.append(bundle_for(req.cpu, req.mem))
                self.queue.pop(req.workload, None)
                continue
            floor.append(bundle_for(req.cpu, req.mem))
            current = self.replacing.get(req.workload) or self.active.get(req.workload)
            if current and (current.cpu, current.mem) == (req.cpu, req.mem):
                self.queue.pop(req.workload, None)
                continue
            if req.cpu <= 0 and req.mem <= 0:
                self.release(req.workload, now)
                continue
            self.queue[req.workload] = Reservation(
                name=f"{self.prefix}{req.workload}-{next(self._ids)}",
                workload=req.workload,
                cpu=req.cpu,
                mem=req.mem,
                requested_at=now,
                needed_at=req.needed_at,
                confidence=req.confidence,
                reason=req.reason,
            )
        self._launch(requests, now)
        self._set_floor(floor)

    def _launch(self, requests: Sequence[ResourceRequest], now: float) -> None:
        order = {r.workload: i for i, r in enumerate(requests)}
        for workload in sorted(self.queue, key=lambda w: order.get(w, len(order))):
            if self.pending_count() >= self.max_pending:
                break
            res = self.queue.pop(workload)
            stale = self.replacing.pop(workload, None)
            if stale is not None:  # superseded before it was ever ready
                self._remove(stale, now)
            res.handle = self.backend.create(res.name, [bundle_for(res.cpu, res.mem)])
            res.state = "pending"
            res.created_at = now
            self.history.append(res)
            if workload in self.active:
                self.replacing[workload] = res
            else:
                self.active[workload] = res
        self._refresh(now)

    def _refresh(self, now: float) -> None:
        for res in self._live():
            if res.state == "pending" and self.backend.is_ready(res.handle):
                res.state = "ready"
                res.ready_at = now
        for workload, new in list(self.replacing.items()):
            if new.state == "ready":  # make-before-break: only now drop the old one
                old = self.active[workload]
                self._remove(old, now)
                self.active[workload] = self.replacing.pop(workload)

    def _set_floor(self, floor: list[dict[str, float]]) -> None:
        # Re-asserted every step: another component (Ray Data) may have overwritten it.
        if self.floor is not None:
            self.floor.set_floor([b for b in floor if b])
        self._floor = floor

    def _remove(self, res: Reservation, now: float) -> None:
        if res.state != "removed":
            self.backend.remove(res.handle)
            res.state = "removed"
            res.removed_at = now

    def release(self, workload: str, now: float) -> None:
        """Give back everything a workload holds or waits for."""
        self.queue.pop(workload, None)
        for table in (self.replacing, self.active):
            res = table.pop(workload, None)
            if res is not None:
                self._remove(res, now)

    def release_all(self, now: float) -> None:
        for workload in {*self.active, *self.replacing, *self.queue}:
            self.release(workload, now)
        self._set_floor([])
