"""Ray implementations of the loop's ports (see :mod:`prae.engine.loop`)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from prae.config import PraeConfig, PredictorSpec
from prae.engine.actors import AllocatorActor, WorkloadSupervisor
from prae.engine.broker import AllocatorMirror, RowAppender, store_sink
from prae.engine.loop import ForecastBatch, Polled
from prae.engine.tracker import RoleStatus
from prae.policy.fallback import rule_forecast
from prae.policy.requests import ResourceRequest

log = logging.getLogger(__name__)


def _status(d: Mapping[str, Any]) -> RoleStatus:
    return RoleStatus(d.get("exit_code"), d.get("result"), float(d.get("cost_cpu_seconds") or 0.0), d.get("error"))


class RayTelemetrySource:
    """One WorkloadSupervisor actor per workload; ``poll`` asks them all at once."""

    def __init__(
        self,
        config: PraeConfig,
        workdir: Path,
        prefix: str,
        histories: Mapping[str, bytes | None] | None = None,
        shadow_wait_s: float = 15.0,
        shadow_start_timeout_s: float = 60.0,
    ) -> None:
        """``histories``: per workload, the previous run its shadow plays (if it plays one).
        The live runs start together once every actor is up, or after ``shadow_wait_s``
        for a shadow that is not (no node has its resources yet, say); a shadow not started
        ``shadow_start_timeout_s`` after its live run is dropped, the live run goes on."""
        self.supervisors: dict[str, Any] = {}
        self.stopped: set[str] = set()
        histories = histories or {}
        for w in config.workloads:
            self.supervisors[w.name] = WorkloadSupervisor.options(name=f"{prefix}supervisor-{w.name}").remote(
                w, str(workdir / w.name), config.run.seed, config.run.interval_s, prefix, histories.get(w.name)
            )
        # Every workload's actors up first (seconds on a busy node), then all started at once.
        ray.get([s.prepare.remote(shadow_wait_s) for s in self.supervisors.values()])
        ray.get([s.start.remote(shadow_start_timeout_s) for s in self.supervisors.values()])

    def poll(self) -> dict[str, Polled]:
        names = [n for n in self.supervisors if n not in self.stopped]
        refs = [self.supervisors[n].poll.remote() for n in names]
        out = {}
        for name, ref in zip(names, refs, strict=True):
            try:
                d = ray.get(ref, timeout=30)
            except Exception as exc:
                # A dead supervisor: report the workload as failed rather than hang the loop.
                log.error("supervisor of %s is gone: %r", name, exc)
                out[name] = Polled(live_status=RoleStatus(exit_code=-1, error=repr(exc)))
                self.stopped.add(name)
                continue
            out[name] = Polled(d["live"]["samples"], d["shadow"]["samples"], _status(d["live"]), _status(d["shadow"]))
        return out

    def stop(self, workload: str | None = None) -> None:
        names = [workload] if workload else list(self.supervisors)
        for name in names:
            if name in self.stopped:
                continue
            try:
                ray.get(self.supervisors[name].stop.remote(), timeout=30)
            except Exception as exc:
                log.warning("stopping %s: %r", name, exc)
            self.stopped.add(name)

    def kill(self) -> None:
        for sup in self.supervisors.values():
            ray.kill(sup)


class ServeForecaster:
    """Calls the predictor Serve app with one vectorised request per tick.

    If the app does not answer within ``timeout_s`` (down, restarting, overloaded), the tick
    is served by :func:`rule_forecast` and marked ``fallback``: the loop never stalls on Serve.
    """

    def __init__(self, spec: PredictorSpec, horizon_steps: int, timeout_s: float = 10.0) -> None:
        from serve_apps.predictor_app import deploy

        self.spec = spec
        self.timeout_s = timeout_s
        self.handle = deploy(spec)
        info = self.handle.info.remote().result(timeout_s=120)
        self.version = info["version"]
        self.horizon_steps = min(horizon_steps, int(info["horizon_steps"]))
        self.window_steps = int(info["window_steps"])
        self.replica_ids: set[str] = {info["replica"]}

    def forecast(self, live: np.ndarray, shadow: np.ndarray) -> ForecastBatch:
        try:
            parts = []
            step = self.spec.max_batch_size
            for i in range(0, live.shape[0], step):
                resp = self.handle.predict.remote(live[i : i + step], shadow[i : i + step]).result(
                    timeout_s=self.timeout_s
                )
                parts.append(resp["quantiles"])
                self.version = resp["version"]
                self.replica_ids.add(resp["replica"])
            return ForecastBatch(np.concatenate(parts), "model", self.version)
        except Exception as exc:
            log.warning("predictor unavailable (%r); using the fallback rule this tick", exc)
            return ForecastBatch(rule_forecast(live, self.horizon_steps), "fallback", self.version)

    def swap(self, checkpoint: str) -> str:
        from serve_apps.predictor_app import deploy

        self.handle = deploy(self.spec, checkpoint)  # user_config only: replicas are reconfigured
        info = self.handle.info.remote().result(timeout_s=120)
        self.version = info["version"]
        self.replica_ids.add(info["replica"])
        return self.version


class RayAllocator:
    """The loop's ``Allocator`` port over the allocator actor. Its decision records and
    resizes are mirrored here call by call (``AllocatorMirror``): a restarted actor loses
    none of them. With a ``store`` the records of removed groups go to its
    ``reservations`` table as they close, and ``records`` returns the rest."""

    def __init__(self, config: PraeConfig, prefix: str, actor: Any = None, store: RowAppender | None = None) -> None:
        self.actor = actor or AllocatorActor.options(name=f"{prefix}allocator", get_if_exists=True).remote(
            config.allocator, f"{prefix}res-"
        )
        self.mirror = AllocatorMirror(store_sink(store) if store is not None else None)

    def apply(self, requests: Sequence[ResourceRequest], now: float) -> dict[str, tuple[float, float]]:
        report = ray.get(
            self.actor.apply_reporting.remote(list(requests), now, self.mirror.since, self.mirror.resizes_seen)
        )
        self.mirror.asked(requests, now)
        self.mirror.take(report, now)
        return report.held

    def release(self, workload: str, now: float) -> None:
        ray.get(self.actor.release.remote(workload, now))

    def release_all(self, now: float) -> None:
        ray.get(self.actor.release_all.remote(now))

    def records(self) -> list[dict[str, Any]]:
        return self.mirror.final(ray.get(self.actor.records.remote()))

    def ready_group_names(self, workload: str) -> list[str]:
        return ray.get(self.actor.ready_group_names.remote(workload))

    def resize_summary(self) -> dict[str, Any]:
        return self.mirror.resize_summary()


TRAIN_ACTOR_CLASSES = ("TrainController", "RayTrainWorker")


def train_actors_alive() -> list[dict[str, Any]]:
    """This job's live Ray Train actors (the retraining runs' controllers and workers)."""
    from ray._private import state

    job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
    alive = state.actors(job_id=job, actor_state_name="ALIVE").values()
    return [a for a in alive if a.get("ActorClassName") in TRAIN_ACTOR_CLASSES]


class RayRetrainer:
    """Runs ``train.retrain.retrain_from_store`` (a Ray Train job) as a background task."""

    def __init__(self, config: PraeConfig, store_root: Path, out_dir: Path, base_checkpoint: str) -> None:
        self.config = config
        self.store_root = store_root
        self.out_dir = out_dir
        self.base = base_checkpoint
        self.ref: Any = None
        self.results: list[dict[str, Any]] = []

    @property
    def running(self) -> bool:
        return self.ref is not None

    def start(self, version: int) -> None:
        from train.retrain import retrain_from_store

        spec, run = self.config.retrain, self.config.run
        # max_calls=1: the worker exits after the run, and with it the Train controller actor
        # it owns -- Train V2 leaves the controller ALIVE after fit() returns, one leaked
        # actor process per retraining otherwise.
        task = ray.remote(num_cpus=0, max_calls=1)(retrain_from_store)
        self.ref = task.remote(
            store_root=str(self.store_root),
            base_checkpoint=self.base,
            out_path=str(self.out_dir / f"model-v{version}.pt"),
            window_steps=run.window_steps,
            horizon_steps=run.horizon_steps,
            epochs=spec.epochs,
            min_rows=spec.min_rows,
            num_workers=spec.num_workers,
            use_gpu=spec.use_gpu,
            seed=run.seed + version,
            storage_path=str(self.out_dir / "ray_train"),
            promotion=spec.promotion(),
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        """Cancel a run in progress and wait until it is gone.

        Force-cancelling the task kills its worker, and Ray then kills the actors that worker
        owns (the Train controller and its workers). Left running, a controller outlives an
        embedded Ray's shutdown as an orphan process that nobody stops.
        """
        if self.ref is None:
            return
        ref, self.ref = self.ref, None
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True, recursive=True)
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(Exception):
            ray.wait([ref], timeout=timeout_s)
        # The owned actors die asynchronously after their owner: wait for them too, so an
        # embedded Ray that shuts down next leaves no controller behind.
        while train_actors_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.results.append({"cancelled": "the run ended before this retraining finished"})

    def poll(self) -> str | None:
        if self.ref is None:
            return None
        done, _ = ray.wait([self.ref], timeout=0)
        if not done:
            return None
        ref, self.ref = self.ref, None
        try:
            result = ray.get(ref)
        except Exception as exc:
            log.error("retraining failed; keeping the current model: %r", exc)
            self.results.append({"error": repr(exc)})
            return None
        self.results.append(result)
        if not result.get("checkpoint") or not os.path.exists(result["checkpoint"]):
            return None
        if not result.get("promote", False):
            # The champion stays, and the next run fine-tunes it again (not the challenger).
            log.info("retrained model %s not promoted: %s", result["checkpoint"], result.get("verdict"))
            return None
        self.base = result["checkpoint"]  # the next run fine-tunes the newest served weights
        return result["checkpoint"]
