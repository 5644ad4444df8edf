"""The seam between a reservation and the live workload: its tasks and actors run *in* it.

A reservation is a set of named placement groups ``<prefix><workload>-<n>`` (see
:class:`~prae.engine.broker.ReservationBroker`). This module finds a workload's ready
groups by name from any process of the cluster (the workload's driver, its tasks), and
schedules work into their bundles::

    placer = ReservationPlacer(prefix="prae-demo-res-", workload="etl")
    ref = placer.submit(step, batch, num_cpus=1)           # a task, into a free bundle
    actor = placer.create_actor(Trainer, num_cpus=2)       # an actor, likewise

Work goes to a ready bundle with room first, then to a bundle of a group still pending
(the reservation is on its way: the autoscaler is already adding a node for it, and a task
scheduled outside would make it add a second one), and only then outside. Work that does
not fit what is reserved or requested (the forecast was too low) is not held back: it is
scheduled like any task (no placement group) and Ray's autoscaler reacts to it -- the
reactive path. The next planning tick grows the reservation (reason
``reactive_correction``).

Accounting is on the caller's side: the placer knows each bundle's size and what it put
there (finished tasks are pruned with ``ray.wait``); Ray's own available-resource view
lags by its report interval and would over-fill a bundle under a burst of submissions.

Stranded tasks: a task sent to a group that is removed before the task starts (the
broker shrank the reservation between the placer's last look and the submission, or
removed a group still pending) is left infeasible by Ray for ever (ray#18572), and a
``ray.get`` on it hangs. The broker never removes a group something runs in, but it
cannot see a task that is only on its way. So a caller that waits on its tasks calls
:meth:`ReservationPlacer.recover` while it waits: a task whose group has been gone for
``grace_s`` without the task finishing is cancelled and submitted again (into another
bundle, or outside), and the caller swaps the new ref in::

    ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
    for old, new in placer.recover():
        running[new] = running.pop(old)

Only tasks are resubmitted (an actor keeps its handle; it is never stranded by a shrink
because its creation takes the bundle at once). A task that *was* running when its group
went was killed by Ray and fails on its own within the grace; the broker never removes
a group in use, so that needs a race on top of a race.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, get_placement_group, placement_group_table
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

EPS = 1e-9
# What a workload process is told about its reservation (set by whoever starts it).
ENV_PREFIX = "PRAE_RESERVATION_PREFIX"
ENV_WORKLOAD = "PRAE_WORKLOAD"


def _seq(prefix: str, workload: str, name: str) -> int | None:
    m = re.fullmatch(re.escape(prefix + workload) + r"-(\d+)", name)
    return int(m.group(1)) if m else None


def reservation_groups(
    prefix: str, workload: str, include_pending: bool = False
) -> list[tuple[PlacementGroup, list[dict[str, float]]]]:
    """The workload's ready (CREATED) groups and their bundles, oldest first; with
    ``include_pending`` also the ones still waiting for capacity (after the ready ones).

    Found in the GCS placement-group table by name, so it works in any namespace and
    needs no call to the allocator.
    """
    found = []
    for pg_id, info in placement_group_table().items():
        seq = _seq(prefix, workload, info.get("name") or "")
        state = info.get("state")
        if seq is None or not (state == "CREATED" or (include_pending and state == "PENDING")):
            continue
        bundles = info.get("bundles") or {}
        pg = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id)))
        found.append((state != "CREATED", seq, pg, [dict(bundles[i]) for i in sorted(bundles)]))
    found.sort(key=lambda x: (x[0], x[1]))
    return [(pg, b) for _, _, pg, b in found]


def strategy_into(group: PlacementGroup | str, bundle_index: int = -1) -> PlacementGroupSchedulingStrategy:
    """A scheduling strategy into a group (given itself or by name, e.g. from
    ``ReservationBroker.ready_group_names``); child tasks stay in the group too."""
    pg = get_placement_group(group) if isinstance(group, str) else group
    return PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=bundle_index, placement_group_capture_child_tasks=True
    )


@dataclass
class _Slot:
    pg: PlacementGroup
    index: int
    cpu: float
    mem: float
    refs: list[Any] = field(default_factory=list)  # (ObjectRef, cpu, mem) or (actor, cpu, mem)
    gone_at: float | None = None  # when a refresh no longer found the group

    def used(self) -> tuple[float, float]:
        return (sum(c for _, c, _ in self.refs), sum(m for _, _, m in self.refs))

    def fits(self, cpu: float, mem: float) -> bool:
        u_cpu, u_mem = self.used()
        return u_cpu + cpu <= self.cpu + EPS and u_mem + mem <= self.mem + EPS


@dataclass(frozen=True)
class _Call:
    """How a task was submitted, to submit it again if it is stranded."""

    fn: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    cpu: float
    mem: float


class ReservationPlacer:
    """Puts one workload's tasks and actors into its reserved bundles while they have room."""

    def __init__(self, prefix: str, workload: str, refresh_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, use_pending: bool = True) -> None:
        self.prefix = prefix
        self.workload = workload
        self.refresh_s = refresh_s
        self.use_pending = use_pending
        self.clock = clock
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._gone: list[_Slot] = []  # slots whose group went while tasks were placed there
        self._calls: dict[Any, _Call] = {}  # unfinished task ref -> how it was submitted
        self._refreshed_at = -float("inf")
        self.placed = 0  # how many went into the reservation
        self.overflow = 0  # how many went to the cluster at large (reactive path)
        self.recovered = 0  # stranded tasks cancelled and submitted again

    @classmethod
    def from_env(cls, **kwargs: Any) -> ReservationPlacer | None:
        """The placer of the workload this process belongs to, from ``PRAE_RESERVATION_PREFIX``
        and ``PRAE_WORKLOAD``; None when not started under PRAE (schedule as usual)."""
        prefix, workload = os.environ.get(ENV_PREFIX), os.environ.get(ENV_WORKLOAD)
        return cls(prefix, workload, **kwargs) if prefix and workload else None

    def refresh(self, force: bool = False) -> None:
        """Re-read the workload's groups (grown: new bundles; shrunk: gone ones dropped)."""
        now = self.clock()
        if not force and now - self._refreshed_at < self.refresh_s:
            return
        self._refreshed_at = now
        old, self._slots = self._slots, {}
        for pg, bundles in reservation_groups(self.prefix, self.workload, self.use_pending):
            for i, b in enumerate(bundles):
                key = (pg.id.hex(), i)  # ready groups come first: they are filled first
                self._slots[key] = old.pop(key, None) or _Slot(
                    pg, i, float(b.get("CPU", 0.0)), float(b.get("memory", 0.0))
                )
        for slot in old.values():  # the group is gone: its unfinished tasks may be stranded
            if any(isinstance(r, ray.ObjectRef) for r, _, _ in slot.refs):
                slot.gone_at = now
                self._gone.append(slot)

    def _prune(self) -> None:
        slots = [*self._slots.values(), *self._gone]
        refs = [r for s in slots for r, _, _ in s.refs if isinstance(r, ray.ObjectRef)]
        if not refs:
            return
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        finished = set(done)
        for s in slots:
            s.refs = [x for x in s.refs if not (isinstance(x[0], ray.ObjectRef) and x[0] in finished)]
        for ref in finished:
            self._calls.pop(ref, None)
        self._gone = [s for s in self._gone if s.refs]

    def recover(self, grace_s: float = 2.0) -> list[tuple[Any, Any]]:
        """Cancel and resubmit the tasks stranded in groups that were removed before they
        started (see the module's docstring). Returns ``[(old_ref, new_ref), ...]``: the
        caller waits on the new refs instead. Cheap when nothing is stranded (one
        placement-group table read per ``refresh_s``, one non-blocking ``ray.wait``)."""
        self.refresh()
        self._prune()
        now = self.clock()
        swapped = []
        for slot in [s for s in self._gone if s.gone_at is not None and now - s.gone_at >= grace_s]:
            self._gone.remove(slot)
            for ref, _, _ in slot.refs:
                call = self._calls.pop(ref, None)
                if call is None:
                    continue  # an actor: it holds its handle, nothing to resubmit
                with contextlib.suppress(Exception):
                    ray.cancel(ref)  # infeasible for ever otherwise: leave no demand behind
                self.placed -= 1  # counted again where the new one goes
                self.recovered += 1
                new = self.submit(call.fn, *call.args, num_cpus=call.cpu, memory=call.mem, **call.kwargs)
                swapped.append((ref, new))
        return swapped

    def options(self, num_cpus: float = 1.0, memory: float = 0.0) -> tuple[dict[str, Any], _Slot | None]:
        """``.options(...)`` keywords for one task/actor of this size, and the bundle it
        takes (None: it goes outside the reservation)."""
        self.refresh()
        self._prune()
        opts: dict[str, Any] = {"num_cpus": num_cpus}
        if memory:
            opts["memory"] = memory
        for slot in self._slots.values():
            if slot.fits(num_cpus, memory):
                opts["scheduling_strategy"] = strategy_into(slot.pg, slot.index)
                return opts, slot
        return opts, None

    def submit(self, fn: Any, *args: Any, num_cpus: float = 1.0, memory: float = 0.0, **kwargs: Any) -> Any:
        """``fn.options(...).remote(*args, **kwargs)`` inside a free bundle if there is one."""
        opts, slot = self.options(num_cpus, memory)
        ref = fn.options(**opts).remote(*args, **kwargs)
        self._account(slot, ref, num_cpus, memory)
        if slot is not None:
            self._calls[ref] = _Call(fn, args, kwargs, num_cpus, memory)
        return ref

    def create_actor(self, cls: Any, *args: Any, num_cpus: float = 1.0, memory: float = 0.0, **kwargs: Any) -> Any:
        """An actor inside a free bundle if there is one; call :meth:`forget` when it is gone."""
        opts, slot = self.options(num_cpus, memory)
        actor = cls.options(**opts).remote(*args, **kwargs)
        self._account(slot, actor, num_cpus, memory)
        return actor

    def forget(self, actor: Any) -> None:
        """An actor made by :meth:`create_actor` has been killed: its bundle is free again."""
        for s in self._slots.values():
            s.refs = [x for x in s.refs if x[0] is not actor]

    def _account(self, slot: _Slot | None, handle: Any, cpu: float, mem: float) -> None:
        if slot is None:
            self.overflow += 1
        else:
            slot.refs.append((handle, cpu, mem))
            self.placed += 1

    def reserved(self) -> tuple[float, float]:
        """(cpu, mem) of the bundles currently known."""
        return (sum(s.cpu for s in self._slots.values()), sum(s.mem for s in self._slots.values()))

    def in_reservation(self) -> tuple[float, float]:
        """(cpu, mem) this placer has running or waiting inside the reservation."""
        self._prune()
        used = [s.used() for s in self._slots.values()]
        return (sum(c for c, _ in used), sum(m for _, m in used))
