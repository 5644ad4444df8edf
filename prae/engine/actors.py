"""Thin Ray actors around the plain classes. Each method is a few lines that delegate.

- ``WorkloadHost``       runs one WorkloadProcess (live or shadow) and samples it on a thread.
- ``WorkloadSupervisor`` owns a workload's live host and its shadow host, the shadow on
                         separate resources (its own placement-group bundle or a custom
                         resource); a failing or hanging shadow never touches the live one.
- ``AllocatorActor``     hosts the ReservationBroker (the one owner of request_resources).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from prae.config import AllocatorSpec, WorkloadSpec
from prae.engine.broker import BrokerAllocator, ReservationBroker
from prae.engine.ray_backends import RayCapacityFloor, RayPlacementBackend
from prae.engine.sampling import SamplingThread
from prae.workloads.curve import SAMPLE_INTERVAL_ENV
from prae.workloads.history import plays_history
from prae.workloads.process import WorkloadProcess
from prae.workloads.simulate import HISTORY_ENV

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=0)
class WorkloadHost:
    """Runs one workload process and samples it every ``interval_s`` (``SamplingThread``)."""

    def __init__(
        self,
        spec: WorkloadSpec,
        role: str,
        workdir: str,
        seed: int,
        interval_s: float,
        env: dict[str, str] | None = None,
        history: bytes | None = None,
    ) -> None:
        env = dict(env or {})
        if history is not None:  # written here: this host may be on another node than the engine
            path = Path(workdir).parent / f"{role}-history.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(history)
            env[HISTORY_ENV] = str(path)
        self.proc = WorkloadProcess(spec, role, workdir, seed=seed, env=env)  # type: ignore[arg-type]
        self.sampling = SamplingThread(self.proc, interval_s)

    def ready(self) -> bool:
        """Answers once the actor is up (its worker process started, this class built)."""
        return True

    def start(self) -> int | None:
        self.proc.start()
        self.sampling.start()
        return self.proc.pid

    def drain(self) -> dict[str, Any]:
        return self.sampling.drain()

    def stop(self) -> None:
        self.sampling.stop()
        self.proc.stop()


@ray.remote(num_cpus=0, max_restarts=0)
class WorkloadSupervisor:
    def __init__(
        self,
        spec: WorkloadSpec,
        workdir: str,
        seed: int,
        interval_s: float,
        pg_prefix: str,
        history: bytes | None = None,
    ) -> None:
        """``history``: the previous run for a ``simulate`` shadow with ``source: history``
        (:func:`prae.workloads.history.from_telemetry`); without one it has no shadow."""
        self.spec = spec
        self.shadow_pg = None
        self.shadow_started_at: float | None = None
        self.shadow_start: Any = None  # the shadow's start call, until it has answered
        self.shadow_start_deadline = 0.0
        self.shadow_note: str | None = None
        self.last_shadow_cost = 0.0
        live_cpu = spec.resources.cpu or 1.0
        live_opts: dict[str, Any] = {"num_cpus": live_cpu, "name": f"{pg_prefix}live-{spec.name}"}
        if spec.resources.mem:
            live_opts["memory"] = spec.resources.mem
        # A Python workload that runs Ray tasks finds its reservation by these names
        # (prae.engine.reservations_use.ReservationPlacer.from_env) and schedules into it.
        live_env = {"PRAE_RESERVATION_PREFIX": f"{pg_prefix}res-", "PRAE_WORKLOAD": spec.name}
        self.live = WorkloadHost.options(**live_opts).remote(
            spec, "live", f"{workdir}/live", seed, interval_s, live_env
        )
        self.shadow = None
        wants_history = plays_history(spec)
        if wants_history and history is None:
            self.shadow_note = (
                f"no complete live run of '{spec.name}' in the store yet: its 'simulate' shadow"
                " (source: history) starts with the next run"
            )
        elif spec.shadow.mode != "none":
            self.shadow = self._make_shadow_host(
                workdir, seed, interval_s, pg_prefix, history if wants_history else None
            )

    def _make_shadow_host(
        self, workdir: str, seed: int, interval_s: float, pg_prefix: str, history: bytes | None
    ) -> Any:
        sh = self.spec.shadow
        opts: dict[str, Any] = {"num_cpus": sh.resources.cpu or 0.5, "name": f"{pg_prefix}shadow-{self.spec.name}"}
        if sh.custom_resource:
            # A node pool for shadows (e.g. nodes started with resources={"shadow": N}).
            opts["resources"] = {sh.custom_resource: 0.01}
        else:
            # Its own bundle: the shadow can never take the CPU the live workload is using.
            bundle: dict[str, float] = {"CPU": opts["num_cpus"]}
            if sh.resources.mem:
                bundle["memory"] = float(sh.resources.mem)
            self.shadow_pg = placement_group([bundle], name=f"{pg_prefix}shadow-pg-{self.spec.name}")
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(self.shadow_pg, 0)
        # A 5 % shadow lasts seconds: sample it 5x as often as the live run (>= 0.1 s) so
        # its phases are resolved well enough to align by progress.
        shadow_interval = max(0.1, interval_s / 5)
        # ... and tell it, so a timeline shadow never steps faster than its samples resolve.
        env = {SAMPLE_INTERVAL_ENV: f"{shadow_interval:g}"}
        return WorkloadHost.options(**opts).remote(
            self.spec, "shadow", f"{workdir}/shadow", seed, shadow_interval, env, history
        )

    def prepare(self, shadow_wait_s: float = 15.0) -> None:
        """Wait until the hosts are up, starting nothing. On a busy node a worker process
        takes seconds to start, and only a few start at once (Ray's startup concurrency is
        the node's core count). The engine prepares every workload, then starts them all
        together: no workload runs unwatched while the others' actors come up, and a shadow
        starts with its live run rather than whenever its host is ready. A shadow not up
        within ``shadow_wait_s`` (no node has its resources yet, say) does not hold the
        live runs back: it is started when it comes up (``start``)."""
        ray.get(self.live.ready.remote())
        if self.shadow is not None:
            ray.wait([self.shadow.ready.remote()], timeout=shadow_wait_s)

    def start(self, shadow_start_timeout_s: float = 60.0) -> dict[str, Any]:
        """Start the live run (its pid), and the shadow without waiting for it: a shadow
        not started within ``shadow_start_timeout_s`` is dropped by ``poll``."""
        live = self.live.start.remote()
        if self.shadow is not None:
            # The shadow starts with the live run so it gets ahead of it on its smaller data.
            self.shadow_start = self.shadow.start.remote()
            self.shadow_started_at = time.time()
            self.shadow_start_deadline = self.shadow_started_at + shadow_start_timeout_s
        return {"live_pid": ray.get(live)}

    def _shadow_up(self) -> bool:
        """Whether the shadow has started; drops it once its start has failed or is late."""
        if self.shadow_start is None:
            return True
        try:
            done, _ = ray.wait([self.shadow_start], timeout=0)
            if done:
                ray.get(done[0])
                self.shadow_start = None
                return True
            if time.time() < self.shadow_start_deadline:
                return False
            raise TimeoutError(f"not started within {self.shadow_start_deadline - self.shadow_started_at:g} s")
        except Exception as exc:  # the live run goes on without a shadow
            self.shadow_note = f"shadow failed to start: {exc!r}"
            self._drop_shadow(graceful=False)  # nothing runs there: a stop call would wait 10 s
            return False

    def poll(self) -> dict[str, Any]:
        live = ray.get(self.live.drain.remote())
        shadow: dict[str, Any] = {"samples": [], "exit_code": None, "error": self.shadow_note, "cost_cpu_seconds": 0.0}
        if self.shadow is not None and self._shadow_up():
            timeout = self.spec.shadow.timeout_s
            if timeout and self.shadow_started_at and time.time() - self.shadow_started_at > timeout:
                self.shadow_note = f"shadow stopped after its timeout_s={timeout:g}"
                self._drop_shadow()
            else:
                try:
                    shadow = ray.get(self.shadow.drain.remote(), timeout=10)
                    self.last_shadow_cost = shadow.get("cost_cpu_seconds", 0.0)
                except Exception as exc:  # a dead shadow host: note it, keep supervising the live run
                    self.shadow_note = f"shadow host lost: {exc!r}"
                    self._drop_shadow()
        if self.shadow is None:
            shadow["error"] = self.shadow_note
            shadow["cost_cpu_seconds"] = self.last_shadow_cost
        return {"live": live, "shadow": shadow}

    def _drop_shadow(self, graceful: bool = True) -> None:
        if self.shadow is not None:
            if graceful:
                with contextlib.suppress(Exception):
                    ray.get(self.shadow.stop.remote(), timeout=10)
            ray.kill(self.shadow)
            self.shadow = None
        if self.shadow_pg is not None:
            remove_placement_group(self.shadow_pg)
            self.shadow_pg = None

    def stop(self) -> None:
        if self.shadow is not None:
            # a shadow whose start has not answered runs nothing yet: killed, not asked to stop
            self._drop_shadow(graceful=self._shadow_up())
        try:
            ray.get(self.live.stop.remote(), timeout=15)
        finally:
            ray.kill(self.live)


# Restarted without limit, and a call in flight when it died is run again on the restarted
# actor (at-least-once): every method is idempotent. ``apply`` states the whole desired set
# of reservations, and a restarted broker adopts the groups its predecessor made (by name),
# so a call that had already created groups finds them instead of making them twice;
# ``release``/``release_all`` of what is gone are no-ops. Before, an in-flight call raised
# RayActorError in the engine's loop and the run stopped.
ALLOCATOR_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0, "max_restarts": -1, "max_task_retries": -1}
# The actor keeps the records of removed groups, and its resize log, this long: the engine's
# mirror gets each in the very call that made it (and again in the next), so this only has
# to outlast a call retried on a restarted actor. What it forgets is in the feedback store.
KEEP_CLOSED_S = 600.0


class AllocatorService(BrokerAllocator):
    """The allocator actor's class (``AllocatorActor`` is it on Ray): named and restartable;
    a restarted allocator adopts the groups its predecessor left, removes unclaimed ones."""

    def __init__(self, spec: AllocatorSpec, prefix: str, own_floor: bool = True) -> None:
        super().__init__(
            ReservationBroker(
                RayPlacementBackend(),
                RayCapacityFloor() if own_floor else None,
                prefix,
                spec.max_pending_pgs,
                launch_budget_s=spec.launch_budget_s,
                keep_closed_s=KEEP_CLOSED_S,
            )
        )

    def ready_group_names(self, workload: str) -> list[str]:
        return self.broker.ready_group_names(workload)

    def resize_summary(self) -> Any:
        return self.broker.resize_summary()

    def leaked_removed(self) -> int:
        return self.broker.leaked_removed


AllocatorActor = ray.remote(**ALLOCATOR_ACTOR_OPTIONS)(AllocatorService)
