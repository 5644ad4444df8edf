"""The reservation broker: turns prioritised requests into placement groups, and back.

Ray keeps no priority among pending placement groups and does not even serve them FIFO
(ray#21797, ray#47760), so priority lives here: requests wait in *our* queue, ordered by
:attr:`ResourceRequest.sort_key`, and only the head (``max_pending`` of them) waits
inside Ray.

A workload's reservation is a stack of *slices*, one named, detached placement group
each. Growing adds a slice for the difference; shrinking removes whole slices, newest
first, never below the target and never one the workload is using. So a resize never
drops what a workload holds or kills a task placed in it (removing a placement group
kills what runs in it), and every bundle keeps its node: make-before-break by design.
Where whole slices cannot get near the target (one 1.25-core slice, 0.25 wanted: the
demo's replayed VM held 13x what it used for its whole run), the unused ready slices are
*replaced*: one smaller slice is asked for and they are removed once it is ready, so the
workload holds at least the target throughout. Only for workloads without a task unit
(plain processes): one whose tasks are scheduled into its groups by name could lose a
task to the removal (see ``_shrink``).
Bundles are the workload's unit (``bundle_cpu``), so a 6-core reservation of 1-core tasks
is six bundles that spread over 2-core nodes.

Pre-emption: a request the plan demoted to the autoscaler floor (outranked under the
budget, or not confident enough) keeps what it holds while it uses it, but while a
higher-ranked slice waits in Ray for capacity, its *unused* ready slices are removed,
lowest-ranked first, until the waiting slices fit in what was freed (``preempted_by``
says for whom). A demoted workload's busy slices are never taken.

Launching while there is room: a group that fits is CREATED within milliseconds, so a
step keeps launching from the head of the queue, ``max_pending`` at a time, while each
new group comes up (at most ``launch_budget_s`` per step). The first new group still
pending after ``SETTLE_S`` is waiting for capacity: the step stops there, and only the
queue's head waits in Ray, as above. Without it a cold start of 1000 workloads reserved
``max_pending`` groups per step, ~500 steps for them all (``bench/engine_tick.py``).

Observe-only requests become ``observed`` records, never placement groups: what PRAE
would have held, reported like what it holds. The broker is also the one owner of the
autoscaler floor (``request_resources``), re-asserted every step.

Bounded bookkeeping: a long-lived engine makes reservations for ever (1000 workloads at a
few resizes an hour each is ~10k records an hour), so the broker keeps the records of its
open reservations and of those removed within ``keep_closed_s``, a log of the resizes of
that window, and per-workload counts of every resize. A caller that mirrors it call by
call (``AllocatorMirror``) takes what it needs within that window and keeps the rest
itself (the engine: in the feedback store). ``keep_closed_s=inf`` (the default) keeps
everything, for tests and benchmarks that read a whole run back from the broker.

A plain class over two small ports, tested with fakes and hosted by a thin Ray actor
(:mod:`prae.engine.actors`) in production.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from prae.policy.requests import ResourceRequest

EPS = 1e-9
# Replace slices by a smaller one only when whole-slice removal leaves more than this
# share above the target: a placement group's create-and-remove is not free, and the
# planner's hysteresis already holds back small shrinks.
REPLACE_ABOVE = 0.25
# A group that fits is CREATED ~2 ms after the call (Ray 2.60 on this 2-core machine, 200
# groups one by one: median 2.0 ms, slowest 4.5 ms; 50 at once: all in 70 ms). One still
# pending after this long is waiting for capacity, where the queue's order matters again.
SETTLE_S = 0.02
POLL_S = 0.002
# On a grow, a workload holding this many slices or more gets one slice for its whole
# target instead, replacing its unused ready ones (make-before-break, as a replacement).
# Why: a grow adds a slice and shrinks are rate-limited, so a workload that keeps ramping
# collected placement groups: 12-134 per workload after 600 ticks of the random walks of
# bench/engine_tick.py, each a group Ray tracks and every tick polls.
MAX_SLICES = 8


class PlacementBackend(Protocol):
    """Placement groups. Optional extras a backend may have (looked up with getattr):
    ``in_use(handle) -> bool`` (something runs in the group: never remove it to shrink)
    and ``bundles(handle) -> list[dict]`` (to adopt a predecessor's groups)."""

    def create(self, name: str, bundles: list[dict[str, float]]) -> Any: ...
    def is_ready(self, handle: Any) -> bool: ...
    def remove(self, handle: Any) -> None: ...
    def list_existing(self, prefix: str) -> list[tuple[str, Any]]: ...


class CapacityFloor(Protocol):
    """The autoscaler floor (``request_resources``). Exactly one broker may own it."""

    def set_floor(self, bundles: list[dict[str, float]]) -> None: ...


@dataclass
class Reservation:
    """One slice: one placement group (or, observe-only, what one would have been)."""

    name: str
    workload: str
    cpu: float
    mem: float
    requested_at: float
    needed_at: float
    confidence: float
    reason: str
    bundles: list[dict[str, float]] = field(default_factory=list)
    priority: int = 0
    max_pending_s: float | None = None
    state: str = "queued"  # queued -> pending -> ready -> removed; or observed -> removed
    created_at: float | None = None  # handed to Ray
    ready_at: float | None = None
    removed_at: float | None = None
    adopted: bool = False  # found at start-up, left by a previous allocator
    preempted_by: str | None = None  # removed, unused, to make room for this workload's slice
    replaces: list[str] = field(default_factory=list)  # slices to remove once this is ready
    # when the broker last changed it (made, ready, removed; an adopted one: the first step
    # after the restart): ``changed_records`` sends only what changed since a caller's call
    changed_at: float = -math.inf
    handle: Any = None

    @property
    def in_place_before_need(self) -> bool:
        return bool(readiness(self.created_at, self.ready_at, self.needed_at)["in_place_before_need"])

    @property
    def pending_s(self) -> float | None:
        """How long it waited in Ray (None while still waiting or never handed over)."""
        return readiness(self.created_at, self.ready_at, self.needed_at)["pending_s"]

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("handle")
        d.update(readiness(self.created_at, self.ready_at, self.needed_at))
        return d


def readiness(created_at: float | None, ready_at: float | None, needed_at: float) -> dict[str, Any]:
    """What a record derives from its times: whether the group was ready by the time it was
    needed, and how long it waited in Ray (None while waiting or never handed over)."""
    return {
        "in_place_before_need": ready_at is not None and ready_at <= needed_at,
        "pending_s": None if created_at is None or ready_at is None else ready_at - created_at,
    }


def bundle_for(cpu: float, mem: float) -> dict[str, float]:
    bundle: dict[str, float] = {}
    if cpu > 0:
        bundle["CPU"] = round(cpu, 4)
    if mem > 0:
        bundle["memory"] = float(int(mem))
    return bundle


def bundles_for(cpu: float, mem: float, unit_cpu: float = 0.0) -> list[dict[str, float]]:
    """Bundles of one unit each when the workload has a unit, else one bundle.

    Worked number: 3 cores and 3 GiB of 1-core tasks -> three {CPU: 1, memory: 1 GiB}.
    A remainder below one unit (rounding noise) becomes a smaller last bundle.
    """
    if unit_cpu <= 0 or cpu <= unit_cpu + EPS:
        b = bundle_for(cpu, mem)
        return [b] if b else []
    n_full = int(math.floor(cpu / unit_cpu + EPS))
    rest = cpu - n_full * unit_cpu
    sizes = [unit_cpu] * n_full + ([rest] if rest > 1e-6 else [])
    return [bundle_for(c, mem * c / cpu) for c in sizes]


def _total(slices: Sequence[Reservation]) -> tuple[float, float]:
    return (sum(r.cpu for r in slices), sum(r.mem for r in slices))


def _kept(live: Sequence[Reservation], queued: Reservation | None = None) -> list[Reservation]:
    """The slices that stay: all but those a replacement (launched, or ``queued``) will remove."""
    going = {n for r in live for n in r.replaces}
    if queued is not None:
        going.update(queued.replaces)
    return [r for r in live if r.name not in going]


ResizeEvent = tuple[str, float, str]  # (workload, time, grow|shrink)


def summarise_resizes(
    first_seen: Mapping[str, float], last_seen: Mapping[str, float], counts: Mapping[str, int]
) -> dict[str, Any]:
    """Resizes per workload (``counts``) and per workload-hour of planning (at least a
    minute each)."""
    per: dict[str, dict[str, float]] = {}
    total, hours = 0, 0.0
    for w, first in first_seen.items():
        h = max(last_seen.get(w, first) - first, 60.0) / 3600.0
        n = counts.get(w, 0)
        per[w] = {"resizes": n, "hours": h, "per_hour": n / h}
        total += n
        hours += h
    return {"workloads": per, "resizes": total, "resizes_per_workload_hour": total / hours if hours else 0.0}


class ReservationBroker:
    def __init__(
        self,
        backend: PlacementBackend,
        floor: CapacityFloor | None,
        prefix: str,
        max_pending: int = 2,
        adopt: bool = True,
        adopt_grace_s: float = 60.0,
        launch_budget_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        keep_closed_s: float = math.inf,
    ) -> None:
        if not keep_closed_s > 0:
            raise ValueError(f"keep_closed_s must be > 0 seconds, got {keep_closed_s}")
        self.backend = backend
        self.floor = floor
        self.prefix = prefix
        self.max_pending = max_pending
        self.launch_budget_s = launch_budget_s
        self._clock = clock
        self._sleep = sleep
        self.adopt_grace_s = adopt_grace_s
        self._ids = itertools.count()
        self.slices: dict[str, list[Reservation]] = {}  # workload -> pending/ready slices, oldest first
        self.queue: dict[str, Reservation] = {}  # workload -> the next slice, waiting for a pending slot
        self.observed: dict[str, Reservation] = {}  # observe-only: what it would hold
        self.keep_closed_s = keep_closed_s
        # name -> reservation, in the order made: the open ones and those removed within
        # ``keep_closed_s`` (``_closed`` says which, in the order removed, for pruning)
        self.history: dict[str, Reservation] = {}
        self._closed: deque[Reservation] = deque()
        self.resize_log: deque[ResizeEvent] = deque()  # in order, within ``keep_closed_s``
        self.resizes_pruned = 0  # entries dropped from the log's head: its position base
        self.resize_counts: dict[str, int] = {}  # workload -> every resize, never pruned
        # Names this broker's life: a caller that mirrors resize_log by position starts again
        # from 0 when a restarted allocator's broker (a new incarnation) answers.
        self.incarnation = uuid.uuid4().hex
        self.first_seen: dict[str, float] = {}
        self.last_seen: dict[str, float] = {}
        self._floor: list[dict[str, float]] | None = None
        self._adopt_deadline: float | None = None
        self.adopted, self.leaked_removed = self._take_over_leftovers(adopt)

    # ------------------------------------------------------------------ restart

    def _take_over_leftovers(self, adopt: bool) -> tuple[int, int]:
        """Groups a previous allocator left behind (found by name prefix): adopted when
        their size can be read, so a restarted allocator keeps what its workloads use;
        removed otherwise. Adopted slices nobody asks for within ``adopt_grace_s`` of the
        first step are released: nothing leaks. Returns (adopted, removed)."""
        describe = getattr(self.backend, "bundles", None)
        adopted = removed = 0
        top = -1
        for name, handle in self.backend.list_existing(self.prefix):
            workload, _, seq = name[len(self.prefix) :].rpartition("-")
            bundles = describe(handle) if (adopt and describe is not None and workload) else None
            if not bundles:
                self.backend.remove(handle)
                removed += 1
                continue
            if seq.isdigit():
                top = max(top, int(seq))
            res = Reservation(
                name=name, workload=workload,
                cpu=sum(b.get("CPU", 0.0) for b in bundles), mem=sum(b.get("memory", 0.0) for b in bundles),
                requested_at=0.0, needed_at=0.0, confidence=0.0, reason="adopted",
                bundles=[dict(b) for b in bundles], state="pending",
                adopted=True, handle=handle,
            )
            self.slices.setdefault(workload, []).append(res)
            self.history[res.name] = res
            adopted += 1
        self._ids = itertools.count(top + 1)
        return adopted, removed

    # ------------------------------------------------------------------ queries

    def held(self) -> dict[str, tuple[float, float]]:
        """workload -> (cpu, mem) of what it holds or is about to hold (slices being
        replaced by a smaller one count as already replaced)."""
        out = {w: _total(_kept(s, self.queue.get(w))) for w, s in self.slices.items() if s}
        for w, q in self.queue.items():
            c, m = out.get(w, (0.0, 0.0))
            out[w] = (c + q.cpu, m + q.mem)
        return out

    def ready_amount(self, workload: str) -> tuple[float, float]:
        """What the workload holds in ready groups (observe-only: what it would hold)."""
        if workload in self.observed:
            r = self.observed[workload]
            return (r.cpu, r.mem)
        return _total([r for r in self.slices.get(workload, []) if r.state == "ready"])

    @property
    def active(self) -> dict[str, list[Reservation]]:
        """workload -> its slices (or its observe-only record), for callers that list workloads."""
        out: dict[str, list[Reservation]] = {w: s for w, s in self.slices.items() if s}
        out.update({w: [r] for w, r in self.observed.items()})
        return out

    def ready_group_names(self, workload: str) -> list[str]:
        """Names of the workload's ready placement groups, oldest first: what its tasks and
        actors are scheduled into (see :mod:`prae.engine.reservations_use`)."""
        return [r.name for r in self.slices.get(workload, []) if r.state == "ready"]

    def records(self) -> list[dict[str, Any]]:
        """The records it keeps, in the order made: every one with ``keep_closed_s=inf``."""
        return [r.record() for r in self.history.values()]

    def changed_records(self, since: float) -> list[dict[str, Any]]:
        """The records of reservations made, ready, removed (or adopted) at or after
        ``since``: what a caller that mirrors ``records`` call by call needs. Not the ones
        held unchanged: at 1000 workloads, building and sending every open record each
        call was most of the call (``bench/allocator_growth.py``). ``since`` older than
        ``keep_closed_s`` misses the records pruned since."""
        return [r.record() for r in self.history.values() if r.changed_at >= since]

    def resizes_after(self, position: int) -> tuple[int, list[ResizeEvent]]:
        """The log from ``position`` on (positions count from the broker's first resize),
        as (the position it starts at, the events): later than ``position`` where entries
        from there were pruned."""
        start = max(position, self.resizes_pruned)
        return start, list(itertools.islice(self.resize_log, start - self.resizes_pruned, None))

    def pending_count(self) -> int:
        return sum(1 for s in self.slices.values() for r in s if r.state == "pending")

    def resize_summary(self) -> dict[str, Any]:
        """Resizes (a slice added to, or slices removed from, a reservation already held)
        per workload and per workload-hour of planning."""
        return summarise_resizes(self.first_seen, self.last_seen, self.resize_counts)

    @property
    def resizes(self) -> dict[str, list[tuple[float, str]]]:
        """workload -> its (time, grow|shrink), from the log."""
        out: dict[str, list[tuple[float, str]]] = {}
        for workload, at, kind in self.resize_log:
            out.setdefault(workload, []).append((at, kind))
        return out

    def _resized(self, workload: str, now: float, kind: str) -> None:
        self.resize_log.append((workload, now, kind))
        self.resize_counts[workload] = self.resize_counts.get(workload, 0) + 1

    def _closed_at(self, res: Reservation, now: float) -> None:
        res.state, res.removed_at, res.changed_at = "removed", now, now
        self._closed.append(res)

    def _prune(self, now: float) -> None:
        """Forget the records and resizes older than ``keep_closed_s``, once a step."""
        horizon = now - self.keep_closed_s
        while self._closed and (self._closed[0].removed_at or 0.0) < horizon:
            self.history.pop(self._closed.popleft().name, None)
        while self.resize_log and self.resize_log[0][1] < horizon:
            self.resize_log.popleft()
            self.resizes_pruned += 1

    # ------------------------------------------------------------------ the step

    def apply(self, requests: Sequence[ResourceRequest], now: float) -> None:
        """One planning step: refresh Ray's view, take the new requests, launch from the queue."""
        self._prune(now)
        self._refresh(now)
        floor: list[dict[str, float]] = []
        for req in requests:  # already in priority order
            self.first_seen.setdefault(req.workload, now)
            self.last_seen[req.workload] = now
            if req.realisation == "observe_only":
                self._observe(req, now)
                continue
            bundles = bundles_for(req.cpu, req.mem, req.bundle_cpu)
            floor.extend(bundles)
            if req.realisation == "autoscaler_floor":
                # Capacity is asked for, nothing more is held; what is held stays (in use).
                self.queue.pop(req.workload, None)
                continue
            if req.cpu <= 0 and req.mem <= 0:
                self.release(req.workload, now)
                continue
            self._resize(req, now)
        self._release_unclaimed_adoptions(requests, now)
        self._launch(requests, now)
        self._preempt_for_waiting([r.workload for r in requests if r.realisation == "autoscaler_floor"], now)
        self._set_floor(floor)

    def _resize(self, req: ResourceRequest, now: float) -> None:
        live = self.slices.get(req.workload, [])
        cpu, mem = _total(_kept(live))  # a replacement in flight: what stays once it is done
        if req.cpu > cpu + EPS or req.mem > mem + EPS:  # grow: one slice for the difference
            if self._consolidate(req, now, live):
                return
            d_cpu, d_mem = max(0.0, req.cpu - cpu), max(0.0, req.mem - mem)
            queued = self.queue.get(req.workload)
            if queued is not None and abs(queued.cpu - d_cpu) < EPS and abs(queued.mem - d_mem) < EPS:
                return
            self.queue[req.workload] = self._slice(req, d_cpu, d_mem, now)
            return
        queued = self.queue.pop(req.workload, None)
        if req.cpu < cpu - EPS or req.mem < mem - EPS:
            self._shrink(req, now, queued)

    def _consolidate(self, req: ResourceRequest, now: float, live: list[Reservation]) -> bool:
        """Grow a workload of ``MAX_SLICES`` slices or more by one slice for its whole target
        (less what it keeps: slices in use or not ready), replacing its unused ready
        slices; True if queued. Not for a workload with a task unit (see ``_shrink``)."""
        if req.bundle_cpu > 0 or len(live) < MAX_SLICES or any(r.replaces for r in live):
            return False
        return self._queue_replacement(req, now, self.queue.get(req.workload), grow=True)

    def _shrink(self, req: ResourceRequest, now: float, queued: Reservation | None = None) -> None:
        """Remove slices, newest first (pending ones before any ready one), while what is
        left still covers (cpu, mem) and the slice is not in use; then, if what is left
        is still well above the target, replace the unused ready slices by one smaller."""
        workload, cpu, mem = req.workload, req.cpu, req.mem
        live = self.slices.get(workload, [])
        if any(r.replaces for r in live):
            return  # a replacement is waiting in Ray: shrink again once it is done
        order = sorted(live, key=lambda r: (r.state == "ready", -(r.created_at or 0.0)))
        left_cpu, left_mem = _total(live)
        removed = False
        for res in order:
            if left_cpu - res.cpu < cpu - EPS or left_mem - res.mem < mem - EPS:
                continue
            if self._busy(res):
                continue
            self._remove(res, now)
            live.remove(res)
            left_cpu, left_mem = left_cpu - res.cpu, left_mem - res.mem
            removed = True
        if removed:
            self._resized(workload, now, "shrink")
        # Not for a workload with a task unit: it schedules tasks into its groups by name
        # (ReservationPlacer), and a task submitted to a group just removed is left
        # infeasible by Ray forever (ray#18572): the e2e demo's staged job hung on one.
        # Whole-slice removal (above) keeps that race to groups left unused for a shrink,
        # and ReservationPlacer.recover resubmits what it strands; replacing would strand
        # tasks at every shrink, each losing recover's grace.
        over = left_cpu > cpu * (1 + REPLACE_ABOVE) + EPS or left_mem > mem * (1 + REPLACE_ABOVE) + EPS
        if over and req.bundle_cpu <= 0:
            self._queue_replacement(req, now, queued)

    def _queue_replacement(
        self, req: ResourceRequest, now: float, queued: Reservation | None, *, grow: bool = False
    ) -> bool:
        """Queue one slice that, with the slices kept (in use, or not ready), covers the
        target, replacing the unused ready ones; one replacement at a time per workload
        (a queued one is kept as it is while the target stays the same). A shrink's slice
        must be smaller than what it replaces; a grow's (``_consolidate``) replaces two or
        more. True if one is queued."""
        live = self.slices.get(req.workload, [])
        old = [r for r in live if r.state == "ready" and not self._busy(r)]
        k_cpu, k_mem = _total([r for r in live if r not in old])
        d_cpu, d_mem = max(0.0, req.cpu - k_cpu), max(0.0, req.mem - k_mem)
        o_cpu, o_mem = _total(old)
        if grow:
            if len(old) < 2:
                return False
        elif not old or (d_cpu >= o_cpu - EPS and d_mem >= o_mem - EPS) or (d_cpu <= EPS and d_mem <= EPS):
            return False
        names = [r.name for r in old]
        if (
            queued is not None
            and queued.replaces == names
            and abs(queued.cpu - d_cpu) <= EPS
            and abs(queued.mem - d_mem) <= EPS
        ):
            self.queue[req.workload] = queued
        else:
            self.queue[req.workload] = self._slice(req, d_cpu, d_mem, now, replaces=names)
        return True

    def _busy(self, res: Reservation) -> bool:
        """A ready slice something runs in (the backend's optional ``in_use``): never
        removed to shrink, replace or pre-empt, since removing a group kills what runs in it."""
        in_use = getattr(self.backend, "in_use", None)
        return res.state == "ready" and in_use is not None and bool(in_use(res.handle))

    def _slice(
        self, req: ResourceRequest, cpu: float, mem: float, now: float, **extra: Any
    ) -> Reservation:
        """A new slice of (cpu, mem) for ``req``'s workload, named in sequence."""
        return Reservation(
            name=f"{self.prefix}{req.workload}-{next(self._ids)}",
            workload=req.workload, cpu=cpu, mem=mem,
            requested_at=now, needed_at=req.needed_at, confidence=req.confidence, reason=req.reason,
            bundles=bundles_for(cpu, mem, req.bundle_cpu),
            priority=req.priority, max_pending_s=req.max_pending_s, **extra,
        )

    def _observe(self, req: ResourceRequest, now: float) -> None:
        old = self.observed.get(req.workload)
        if old is not None and (old.cpu, old.mem) == (req.cpu, req.mem):
            return
        if old is not None:
            self._closed_at(old, now)
            self._resized(req.workload, now, "grow" if req.cpu >= old.cpu else "shrink")
        res = self._slice(req, req.cpu, req.mem, now, state="observed", changed_at=now)
        self.observed[req.workload] = res
        self.history[res.name] = res

    def _release_unclaimed_adoptions(self, requests: Sequence[ResourceRequest], now: float) -> None:
        if not self.adopted:
            return
        if self._adopt_deadline is None:
            self._adopt_deadline = now + self.adopt_grace_s
            for res in self.history.values():  # the first step after the restart: report them
                if res.adopted:
                    res.changed_at = max(res.changed_at, now)
        asked = {r.workload for r in requests}
        for workload, live in list(self.slices.items()):
            if workload in asked or workload in self.first_seen:
                continue
            if now >= self._adopt_deadline and all(r.adopted for r in live):
                self.release(workload, now)

    def _launch(self, requests: Sequence[ResourceRequest], now: float) -> None:
        """From the head of the queue while a pending slot is free, and (within
        ``launch_budget_s``) while the groups launched in this step come up."""
        order = {r.workload: i for i, r in enumerate(requests)}
        deadline = self._clock() + self.launch_budget_s
        waiting = self.pending_count()  # pending since an earlier step: waiting for capacity
        fresh: list[Reservation] = []  # launched in this step, not ready yet
        for workload in sorted(self.queue, key=lambda w: order.get(w, len(order))):
            if waiting + len(fresh) >= self.max_pending:
                fresh = self._settle(fresh, now, deadline)
                if waiting + len(fresh) >= self.max_pending:
                    break
            res = self.queue.pop(workload)
            res.handle = self.backend.create(res.name, res.bundles)
            res.state = "pending"
            res.created_at = res.changed_at = now
            self.history[res.name] = res
            fresh.append(res)
            live = self.slices.setdefault(workload, [])
            if live and not res.replaces:  # a replacement counts as a shrink when done
                self._resized(workload, now, "grow")
            live.append(res)
        self._refresh(now)

    def _settle(self, fresh: list[Reservation], now: float, deadline: float) -> list[Reservation]:
        """Those of ``fresh`` still pending once one of them is ready, or after ``SETTLE_S``
        (or at the step's deadline): each poll asks Ray about these groups only."""
        stop = min(deadline, self._clock() + SETTLE_S)
        while fresh:
            for res in fresh:
                self._check_ready(res, now)
            still = [r for r in fresh if r.state == "pending"]
            if len(still) < len(fresh) or self._clock() >= stop:
                return still
            self._sleep(POLL_S)
        return fresh

    def _preempt_for_waiting(self, demoted: Sequence[str], now: float) -> None:
        """Free unused slices of ``demoted`` workloads (given best-ranked first) while slices
        of higher-ranked requests wait in Ray for capacity."""
        waiting = [r for w, live in self.slices.items() if w not in demoted for r in live if r.state == "pending"]
        need = sum(r.cpu for r in waiting)
        if need <= EPS:
            return
        for workload in reversed(demoted):
            live = self.slices.get(workload, [])
            for res in sorted(live, key=lambda r: -(r.created_at or 0.0)):  # newest first
                if need <= EPS:
                    return
                if res.state != "ready" or self._busy(res):
                    continue
                res.preempted_by = waiting[0].workload
                self._remove(res, now)
                live.remove(res)
                self._resized(workload, now, "shrink")
                need -= res.cpu
        self._refresh(now)

    def _refresh(self, now: float) -> None:
        for live in self.slices.values():
            for res in list(live):
                self._check_ready(res, now)

    def _check_ready(self, res: Reservation, now: float) -> None:
        if res.state == "pending" and self.backend.is_ready(res.handle):
            res.state = "ready"
            res.ready_at = res.changed_at = now
            if res.replaces:
                self._finish_replacement(res.workload, res, now)

    def _finish_replacement(self, workload: str, new: Reservation, now: float) -> None:
        """The replacing slice is ready: remove the slices it replaces, except any that
        something started to use meanwhile (a later shrink may take those)."""
        live = self.slices[workload]
        gone = [r for r in live if r.name in new.replaces and not self._busy(r)]
        for res in gone:
            self._remove(res, now)
            live.remove(res)
        new.replaces = []
        # a consolidation (``_consolidate``) grows what the workload holds; a replacement shrinks it
        grew = new.cpu > _total(gone)[0] + EPS or new.mem > _total(gone)[1] + EPS
        self._resized(workload, now, "grow" if grew else "shrink")

    def _set_floor(self, floor: list[dict[str, float]]) -> None:
        """Re-assert our floor every step while we have one: another component (Ray Data)
        may have overwritten it. An empty floor is sent once, to clear ours, and then not
        again, so an observe-only or idle PRAE never clears someone else's."""
        floor = [b for b in floor if b]
        if self.floor is not None and (floor or self._floor):
            self.floor.set_floor(floor)
        self._floor = floor

    def _remove(self, res: Reservation, now: float) -> None:
        if res.state == "removed":
            return
        if res.state != "observed" and res.handle is not None:
            self.backend.remove(res.handle)
        self._closed_at(res, now)

    def release(self, workload: str, now: float) -> None:
        """Give back everything a workload holds or waits for."""
        self.queue.pop(workload, None)
        for res in self.slices.pop(workload, []):
            self._remove(res, now)
        obs = self.observed.pop(workload, None)
        if obs is not None:
            self._remove(obs, now)

    def release_all(self, now: float) -> None:
        for workload in {*self.slices, *self.queue, *self.observed}:
            self.release(workload, now)
        self._set_floor([])


class BrokerAllocator:
    """The loop's ``Allocator`` port over a broker in this process: what ``apply`` returns
    is what each workload holds in ready groups. The allocator actor is this class on Ray;
    tests and benchmarks use it directly."""

    def __init__(self, broker: ReservationBroker) -> None:
        self.broker = broker

    def apply(self, requests: Sequence[ResourceRequest], now: float) -> dict[str, tuple[float, float]]:
        self.broker.apply(requests, now)
        return {w: self.broker.ready_amount(w) for w in self.broker.active}

    def release(self, workload: str, now: float) -> None:
        self.broker.release(workload, now)

    def release_all(self, now: float) -> None:
        self.broker.release_all(now)

    def records(self) -> list[dict[str, Any]]:
        return self.broker.records()

    def apply_reporting(
        self, requests: Sequence[ResourceRequest], now: float, since: float, resizes_seen: tuple[str, int] = ("", 0)
    ) -> AllocatorReport:
        """``apply``, with what changed for a caller that mirrors it (``AllocatorMirror``):
        the records changed since ``since``, and the resizes after the ``resizes_seen``
        (incarnation, count) it has -- all of them if that was another incarnation's."""
        held = self.apply(requests, now)
        incarnation, seen = resizes_seen
        start, resizes = self.broker.resizes_after(seen if incarnation == self.broker.incarnation else 0)
        return AllocatorReport(held, self.broker.changed_records(since), self.broker.incarnation, start, resizes)


@dataclass(frozen=True)
class AllocatorReport:
    held: dict[str, tuple[float, float]]  # what each workload holds in ready groups
    records: list[dict[str, Any]]  # the decision records changed since the caller's last call
    incarnation: str  # the broker's
    resizes_from: int  # the position in its resize log the ``resizes`` start at
    resizes: list[ResizeEvent]


RecordSink = Callable[[list[dict[str, Any]]], None]


class RowAppender(Protocol):
    """What ``store_sink`` writes to: ``prae.store.feedback.FeedbackStore.append``."""

    def append(self, table: str, workload: str, rows: Iterable[Mapping[str, Any]]) -> None: ...


def store_sink(store: RowAppender, clock: Callable[[], float] = time.time) -> RecordSink:
    """A mirror's sink that appends each record as a row of the store's ``reservations``
    table (``RESERVATION_SCHEMA``), under its workload, stamped ``written_at``."""

    def sink(records: list[dict[str, Any]]) -> None:
        now = clock()
        rows: dict[str, list[dict[str, Any]]] = {}
        for rec in records:
            row = {k: v for k, v in rec.items() if k not in ("bundles", "replaces", "max_pending_s")}
            row.update(written_at=now, bundles=len(rec.get("bundles") or []))
            rows.setdefault(rec["workload"], []).append(row)
        for workload, batch in rows.items():
            store.append("reservations", workload, batch)

    return sink


class AllocatorMirror:
    """What the allocator decided, kept by its caller call by call, so that an allocator
    that dies loses none of it: its decision records and its resizes.

    A restarted allocator starts with an empty history: the groups its predecessor made
    come back as ``adopted`` records, with none of what was asked for and when. Merged by
    group name, an adopted record only updates what the allocator now knows of a group the
    mirror has already seen (its state, when it became ready or was removed); every other
    record replaces the mirror's copy of it (the allocator's newer view). Resizes are
    counted by their position in the answering broker's log, so a call run twice (at least
    once, on a restarted actor) counts none twice; positions the broker pruned before they
    were taken are counted in ``resizes_missed``.

    With a ``sink`` the mirror keeps only the open reservations: a record once removed is
    handed to the sink (the engine's: the feedback store) and forgotten, but for its name,
    until the broker can no longer send it again (it sends those removed at or after the
    caller's ``since``). So a long-lived engine's memory follows what is held, not every
    reservation it ever made. Without one it keeps every record (``final`` returns them).
    ``since`` is what the caller passes as the next call's ``since``.
    """

    def __init__(self, sink: RecordSink | None = None) -> None:
        self.sink = sink
        self.by_name: dict[str, dict[str, Any]] = {}
        self._sunk: dict[str, float] = {}  # name -> removed_at, of records handed to the sink
        # the time of the last call taken: the next call asks for what changed since (and,
        # with a sink, a record removed before it was handed over already)
        self.since = -math.inf
        self.resize_counts: dict[str, int] = {}  # every allocator's, per workload
        self.resizes_missed = 0
        self.first_seen: dict[str, float] = {}
        self.last_seen: dict[str, float] = {}
        self.resizes_seen: tuple[str, int] = ("", 0)  # (incarnation, how many of its log)

    def asked(self, requests: Iterable[ResourceRequest], now: float) -> None:
        """The requests of one call: the planning hours the resize rate is per."""
        for req in requests:
            self.first_seen.setdefault(req.workload, now)
            self.last_seen[req.workload] = now

    def take(self, report: AllocatorReport, now: float) -> None:
        """The report of the call made at ``now`` (with ``since`` as it was before this)."""
        self.merge(report.records)
        self._sink_closed()
        self.since = max(self.since, now)
        # the next call sends what was removed at or after ``now``: only those names can
        # come again (``merge`` skips an older record by its time)
        self._sunk = {n: t for n, t in self._sunk.items() if t >= self.since}
        incarnation, seen = self.resizes_seen
        seen = seen if incarnation == report.incarnation else 0
        self.resizes_missed += max(0, report.resizes_from - seen)
        for workload, _, _ in report.resizes[max(0, seen - report.resizes_from) :]:
            self.resize_counts[workload] = self.resize_counts.get(workload, 0) + 1
        self.resizes_seen = (report.incarnation, report.resizes_from + len(report.resizes))

    def resize_summary(self) -> dict[str, Any]:
        return summarise_resizes(self.first_seen, self.last_seen, self.resize_counts)

    def _sink_closed(self) -> None:
        if self.sink is None:
            return
        closed = [r for r in self.by_name.values() if r["state"] == "removed"]
        if closed:
            self.sink(closed)
            for rec in closed:
                del self.by_name[rec["name"]]
                self._sunk[rec["name"]] = rec.get("removed_at") or self.since

    def merge(self, records: Iterable[dict[str, Any]]) -> None:
        for rec in records:
            if rec["name"] in self._sunk or (
                self.sink is not None and rec["state"] == "removed" and (rec.get("removed_at") or 0.0) < self.since
            ):
                continue  # sent again after it was handed to the sink
            old = self.by_name.get(rec["name"])
            if old is None or not rec.get("adopted") or old.get("adopted"):
                self.by_name[rec["name"]] = dict(rec)
                continue
            old["state"] = rec["state"]
            for key in ("ready_at", "removed_at"):
                if old.get(key) is None and rec.get(key) is not None:
                    old[key] = rec[key]
            old.update(readiness(old.get("created_at"), old.get("ready_at"), old["needed_at"]))

    def final(self, last: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """All records, after merging the allocator's own final ``records`` (with a sink:
        those not handed to it yet, which are then handed to it). One the mirror saw held
        or queued that the last allocator does not know (a group removed, or a request
        still queued, when an allocator died) is marked ``lost``: what became of it is not
        known."""
        last = list(last)
        self.merge(last)
        known = {r["name"] for r in last}
        for name, rec in self.by_name.items():
            if name not in known and rec["state"] != "removed":
                rec["state"] = "lost"
        records = list(self.by_name.values())
        if self.sink is not None and records:
            self.sink(records)
            self._sunk.update({r["name"]: r.get("removed_at") or math.inf for r in records})
            self.by_name.clear()
        return records
