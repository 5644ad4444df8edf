"""The PRAE loop (CONCEPT.md's pseudocode), one tick at a time, over small ports.

Each tick, in order:
    1. poll      telemetry of every live workload and its shadow          (TelemetrySource)
    2. resolve   forecasts whose target time has now been observed         (trackers -> store)
    3. forecast  one vectorised request for all running workloads          (Forecaster)
    4. allocate  plan requests by confidence, realise them as reservations (policy -> Allocator)
    5. release   what finished workloads held
    6. learn     retrain from the store in the background; hot-swap when done (Retrainer)
    7. flush     the feedback store, every few ticks, on a background thread

The ports are Protocols: Ray implements them in :mod:`prae.engine.ray_ports`, tests with fakes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from prae.config import PraeConfig, WorkloadSpec
from prae.engine.choices import choice_rows, latest_choice
from prae.engine.metrics import PUBLISH_EVERY_S, EngineMetrics, MetricsSink, WorkloadView
from prae.engine.schedule import grid_after, next_tick, tick_lag
from prae.engine.tick_timing import TickTiming
from prae.engine.tracker import (
    LearningState,
    PendingForecast,
    RoleStatus,
    WorkloadTracker,
    issue_forecasts,
    learn_outcomes,
    telemetry_rows,
)
from prae.policy.requests import (
    Interval,
    ReservationPlanner,
    ResourceRequest,
    WorkloadForecast,
    WorkloadPolicy,
)
from prae.policy.resizes import ResizeLimits
from prae.policy.violation_budget import PooledBudget
from prae.resources import ALLOCATED, CPU, MEM, QUANTILES
from prae.store.feedback import FeedbackStore
from prae.telemetry.sample import TelemetrySample
from prae.workloads.kinds import PARAMS

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- ports


@dataclass
class Polled:
    """What one workload's supervisor reported since the last poll."""

    live: list[TelemetrySample] = field(default_factory=list)
    shadow: list[TelemetrySample] = field(default_factory=list)
    live_status: RoleStatus = field(default_factory=RoleStatus)
    shadow_status: RoleStatus = field(default_factory=RoleStatus)


class TelemetrySource(Protocol):
    def poll(self) -> Mapping[str, Polled]: ...
    def stop(self, workload: str | None = None) -> None: ...


@dataclass(frozen=True)
class ForecastBatch:
    quantiles: np.ndarray  # (B, H, R, Q) raw units
    source: str  # "model" or "fallback"
    version: str


class Forecaster(Protocol):
    window_steps: int  # the history length the model was trained on
    horizon_steps: int

    def forecast(self, live: np.ndarray, shadow: np.ndarray) -> ForecastBatch: ...
    def swap(self, checkpoint: str) -> str: ...


class Allocator(Protocol):
    def apply(self, requests: Sequence[ResourceRequest], now: float) -> dict[str, tuple[float, float]]: ...
    def release(self, workload: str, now: float) -> None: ...
    def release_all(self, now: float) -> None: ...
    def records(self) -> list[dict[str, Any]]: ...


class Retrainer(Protocol):
    def start(self, version: int) -> None: ...
    def poll(self) -> str | None: ...  # a new checkpoint path once a run has finished
    def stop(self) -> None: ...  # cancel a run in progress; nothing of it may outlive the loop
    @property
    def running(self) -> bool: ...


class HotSwap:
    """``forecaster.swap`` on a thread of its own. A redeploy of the Serve app waits until
    every replica has loaded the new weights (1.4 s of a tick under load, here), and the
    replicas keep answering with the old ones meanwhile: the tick need not wait for it."""

    def __init__(self, forecaster: Forecaster, checkpoint: str, before: str) -> None:
        self.checkpoint, self.before = checkpoint, before
        self.after = ""
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, args=(forecaster,), name="prae-hot-swap", daemon=True)
        self.thread.start()

    def _run(self, forecaster: Forecaster) -> None:
        try:
            self.after = forecaster.swap(self.checkpoint)
        except Exception as exc:  # reported by the loop; the served model stays
            self.error = exc

    def done(self, wait_s: float = 0.0) -> bool:
        if wait_s > 0:
            self.thread.join(wait_s)
        return not self.thread.is_alive()


# How long the end of a run waits for a hot swap in progress before reporting without it.
SWAP_WAIT_S = 60.0


@dataclass
class SwapEvent:
    at: float
    checkpoint: str
    version_before: str
    version_after: str


# ----------------------------------------------------------------------------- loop


def workload_policy(spec: WorkloadSpec) -> WorkloadPolicy:
    """The allocator's view of a workload's profile. A ``tasks`` job's reservation is made
    of bundles of its task size unless the profile says otherwise: a bundle smaller than a
    task could never run one."""
    unit = spec.profile.unit_cpu
    if unit is None and spec.kind == "tasks":
        unit = float(spec.params.get("task_cpu", PARAMS["tasks"]["task_cpu"].default))
    return WorkloadPolicy(spec.profile.priority, spec.profile.max_pending_s, spec.profile.bounds, unit or 0.0)


class EngineLoop:
    def __init__(
        self,
        config: PraeConfig,
        telemetry: TelemetrySource,
        forecaster: Forecaster,
        allocator: Allocator,
        store: FeedbackStore,
        retrainer: Retrainer | None = None,
        clock: Callable[[], float] = time.time,
        flush_every: int = 5,
        timer: Callable[[], float] = time.perf_counter,
        metrics: MetricsSink | None = None,
    ) -> None:
        """``clock``: the time forecasts are stamped with; ``timer``: what times the ticks;
        ``metrics``: where the engine's metrics go every ``PUBLISH_EVERY_S`` (on Ray:
        ``prae.engine.ray_metrics.ActorMetricsSink``), None: nowhere."""
        self.config = config
        self.telemetry = telemetry
        self.forecaster = forecaster
        self.allocator = allocator
        self.store = store
        self.retrainer = retrainer
        self.clock = clock
        self.flush_every = flush_every
        self.trackers = {}
        # one slot per workload: a tick calibrates, chooses and learns for all in one call each
        self.learning = LearningState(max(1, len(config.workloads)))
        for slot, w in enumerate(config.workloads):
            # a run's end writes one choices file per workload: the newest is its last run's
            carried = latest_choice(store.read("choices", w.name, newest=1), w.name)
            if carried is not None:
                log.info("workload '%s': point-forecast choice carried from its previous run", w.name)
            self.trackers[w.name] = WorkloadTracker(
                w,
                config.run.interval_s,
                carried=carried,
                state=self.learning,
                slot=slot,
                analog=config.predictor.analog_candidate,
            )
        self.policies = {w.name: workload_policy(w) for w in config.workloads}
        # Hysteresis against what was last asked for, shrink-rate limits, resizes counted
        # per workload-hour: the same planner drives the cluster simulator.
        a = config.allocator
        self.planner = ReservationPlanner(
            a, self.policies, ResizeLimits(a.max_shrinks_per_hour, a.min_hold_s, a.peak_hold_s)
        )
        # One price per allocated resource carried from tick to tick (None: reserve_quantile).
        self.budget = PooledBudget(a.violation_budget) if a.violation_budget else None
        self.budget_state = self.budget.initial_state(len(ALLOCATED)) if self.budget else None
        self.held: dict[str, tuple[float, float]] = {}
        self.swaps: list[SwapEvent] = []
        self.model_version = ""
        self.ticks = 0
        self.started_at = clock()
        self.last_retrain_at = self.started_at
        self.retrain_runs = 0
        self._retrain_after_flush: int | None = None  # a due retraining waits for this flush
        self._swap: HotSwap | None = None  # a promoted model being loaded into Serve
        self.fallback_ticks = 0
        self.timing = TickTiming(config.run.interval_s, timer)
        self.metrics_sink = metrics
        self.metrics = EngineMetrics()
        self._published_at = -float("inf")

    # ------------------------------------------------------------------ the tick

    def tick(self) -> bool:
        """Run one tick; returns whether any workload is still running."""
        now = self.clock()
        with self.timing.tick():
            with self.timing.phase("poll"):
                self._poll()
            with self.timing.phase("resolve"):
                self._resolve()
            self._forecast_and_allocate(now)
            with self.timing.phase("release"):
                self._release_finished(now)
            with self.timing.phase("learn"):
                self._learn(now)
            if now - self._published_at >= PUBLISH_EVERY_S:
                with self.timing.phase("metrics"):
                    self._publish_metrics(now)
        self.ticks += 1
        if self.ticks % self.flush_every == 0:
            self.store.start_flush()  # on a thread: the tick does not wait for the disk
        return any(not t.finished for t in self.trackers.values())

    def _poll(self) -> None:
        for name, polled in self.telemetry.poll().items():
            tr = self.trackers[name]
            tr.live.extend(polled.live)
            tr.shadow.extend(polled.shadow)
            tr.live_status, tr.shadow_status = polled.live_status, polled.shadow_status
            rows = telemetry_rows("live", polled.live) + telemetry_rows("shadow", polled.shadow)
            if rows:
                self.store.append("telemetry", name, rows)

    def _reserved(self, name: str) -> dict[str, float]:
        cpu, mem = self.held.get(name, (0.0, 0.0))
        return {"cpu": cpu, "mem": mem}

    def _resolve(self, final: bool = False) -> None:
        outcomes = []
        for name, tr in self.trackers.items():
            rows, resolved = tr.take_resolved(self._reserved(name), final=final)
            outcomes.extend((tr.slot, fc, y) for fc, y in resolved)
            if rows:
                self.store.append("forecasts", name, rows)
                if self.metrics_sink is not None:
                    self.metrics.resolved(name, rows)
        learn_outcomes(self.learning, outcomes)

    def _forecast_and_allocate(self, now: float) -> None:
        running = [t for t in self.trackers.values() if t.ready_to_forecast()]
        if not running:
            return
        run = self.config.run
        # Send at least the model's own window: it pads a young workload's history itself.
        steps = max(run.window_steps, self.forecaster.window_steps)
        windows = [t.window(steps, run.horizon_steps) for t in running]
        live = np.stack([w[0] for w in windows]).astype(np.float32)
        shadow = np.stack([w[1] for w in windows]).astype(np.float32)
        with self.timing.phase("forecast"):
            batch = self.forecaster.forecast(live, shadow)
        if batch.source != "model":
            self.fallback_ticks += 1
        self.model_version = batch.version if batch.source == "model" else self.model_version
        h = min(run.horizon_steps, batch.quantiles.shape[1]) - 1
        lead_s = (h + 1) * run.interval_s
        raw_steps = np.asarray(batch.quantiles[:, : h + 1], dtype=float)  # (n, h+1, R, Q)
        slots = np.array([tr.slot for tr in running], dtype=np.int64)
        # the steps before the lead (their peaks are held too, _budget_amounts) as the model
        # said them, calibrated; the lead's step is issued with its chosen median, below
        all_steps = np.empty_like(raw_steps)
        all_steps[:, :h] = self.learning.calibration.adjust(slots, raw_steps[:, :h])
        chosen = issue_forecasts(running, raw_steps[:, h], h + 1)
        issued = []
        for i, tr in enumerate(running):
            fc = chosen[i]
            all_steps[i, h] = fc.quantiles
            issued_at = tr.live.ts[-1]
            tr.add_forecast(
                PendingForecast(
                    issued_at, issued_at + lead_s, fc.quantiles, batch.source, batch.version, windows[i][2], fc
                )
            )
            issued.append(issued_at)
        amounts = self._budget_amounts(all_steps)
        forecasts = [
            self._workload_forecast(
                tr,
                all_steps[i],
                issued[i],
                lead_s,
                windows[i][2],
                batch.source != "model",
                None if amounts is None else amounts[i],
            )
            for i, tr in enumerate(running)
        ]
        requests = self.planner.plan(forecasts, now, held=self.held)
        with self.timing.phase("allocate"):
            self.held = dict(self.allocator.apply(requests, now))

    def _budget_amounts(self, q_steps: np.ndarray) -> np.ndarray | None:
        """(S, 2) cpu and mem to reserve for each running workload under the violation
        budget, or None without one. q_steps: (S, h+1, R, Q) calibrated.

        Each workload's quantiles are their peaks over the steps up to the lead (so, as
        with reserve_quantile, no step before the lead is let go); ``PooledBudget`` picks
        one level per workload at the price carried from earlier ticks -- the code the
        backtest's allocation and the cluster simulator's ``prae_budget`` run.
        """
        if self.budget is None or self.budget_state is None:
            return None
        peaks = q_steps.max(axis=1)  # (S, R, Q), monotone in Q
        res, self.budget_state = self.budget.step(peaks[:, list(ALLOCATED)].transpose(1, 0, 2), self.budget_state)
        return np.asarray(res.alloc).T

    def _workload_forecast(
        self,
        tr: WorkloadTracker,
        q_steps: np.ndarray,
        issued_at: float,
        lead_s: float,
        shadow_used: bool,
        fallback: bool,
        amount: np.ndarray | None = None,
    ) -> WorkloadForecast:
        """q_steps: (h+1, R, Q) calibrated quantiles for every step up to the lead.

        The interval is the one at the lead; the amount to reserve is the peak of the reserve
        quantile over all steps up to it, so a reservation never lets go of a step that
        comes before the lead -- or ``amount`` (cpu, mem), the violation budget's choice.
        """
        iq = {lvl: j for j, lvl in enumerate(QUANTILES)}
        rq = iq[self.config.allocator.reserve_quantile]
        q = q_steps[-1]
        if amount is None:
            amount = np.array([q_steps[:, CPU, rq].max(), q_steps[:, MEM, rq].max()])
        now_vals = tr.live.values[-1]

        def interval(r: int) -> Interval:
            return Interval(low=float(q[r, iq[0.1]]), median=float(q[r, iq[0.5]]), high=float(q[r, iq[0.9]]))

        return WorkloadForecast(
            workload=tr.name,
            issued_at=issued_at,
            lead_s=lead_s,
            cpu=interval(CPU),
            mem=interval(MEM),
            cpu_reserve_q=float(amount[0]),
            mem_reserve_q=float(amount[1]),
            cpu_now=float(now_vals[CPU]),
            mem_now=float(now_vals[MEM]),
            shadow_used=shadow_used,
            from_fallback=fallback,
        )

    def _release_finished(self, now: float) -> None:
        for name, tr in self.trackers.items():
            if tr.finished and not tr.released:
                self.allocator.release(name, now)
                self.planner.forget(name, now)
                self.held.pop(name, None)
                self.telemetry.stop(name)
                tr.released = True

    def _learn(self, now: float) -> None:
        spec = self.config.retrain
        if self.retrainer is None or not spec.enabled:
            return
        self._finish_swap(now)
        if self._swap is None:
            new_ckpt = self.retrainer.poll()
            if new_ckpt is not None:
                self._swap = HotSwap(self.forecaster, new_ckpt, self.model_version)
        if self._retrain_after_flush is not None:
            # The run reads the store: it starts once everything up to its due tick is on
            # disk, written on the flush thread (a tick that wrote it itself took up to
            # 1.7 s on a loaded machine, and every workload's forecast waited).
            if self.store.flush_done(self._retrain_after_flush):
                self._retrain_after_flush = None
                self.retrain_runs += 1
                self.retrainer.start(self.retrain_runs)
        elif not self.retrainer.running and now - self.last_retrain_at >= spec.every_s:
            self._retrain_after_flush = self.store.request_flush()
            self.last_retrain_at = now

    def _finish_swap(self, now: float, wait_s: float = 0.0) -> None:
        """Record a hot swap that has finished (waiting up to ``wait_s`` for it)."""
        swap = self._swap
        if swap is None or not swap.done(wait_s):
            return
        self._swap = None
        if swap.error is not None:
            log.error("hot swap of %s failed; the served model stays: %r", swap.checkpoint, swap.error)
            return
        self.model_version = swap.after
        self.swaps.append(SwapEvent(now, swap.checkpoint, swap.before, swap.after))
        log.info("hot-swapped predictor %s -> %s (%s)", swap.before, swap.after, swap.checkpoint)

    # ------------------------------------------------------------------ whole run

    def run(self, duration_s: float | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        """Tick until the workloads finish or ``duration_s`` has passed: once at once, then
        ``tick_lag`` after each point of the samplers' grid (``prae.engine.schedule``)."""
        interval = self.config.run.interval_s
        deadline = None if duration_s is None else self.started_at + duration_s
        now = self.clock()
        slot = grid_after(now - interval, interval, tick_lag(interval))  # the last slot passed
        try:
            while True:
                if not self.tick():
                    break
                now = self.clock()
                if deadline is not None and now >= deadline:
                    log.info("duration reached; stopping the workloads")
                    break
                when, slot = next_tick(slot, now, interval)
                sleep(max(0.0, when - now))
        finally:
            self.close()

    def close(self) -> None:
        now = self.clock()
        self._finish_swap(now, wait_s=SWAP_WAIT_S)  # one in progress is reported, not lost
        if self._swap is not None:
            log.warning("hot swap of %s still loading at the end of the run: not reported", self._swap.checkpoint)
        if self.retrainer is not None:
            self.retrainer.stop()  # a half-done run's weights are never swapped in
        self.telemetry.stop(None)
        self._poll_quietly()
        self._resolve(final=True)
        self._save_choices(now)
        self.allocator.release_all(now)
        self.held.clear()
        self._publish_metrics(now)  # the end: nothing held, nothing running
        self.store.flush()

    def _publish_metrics(self, now: float) -> None:
        """Hand the metrics to the sink (``prae.engine.metrics``): counters since the last
        call, gauges as they are now."""
        self._published_at = now
        if self.metrics_sink is None:
            return
        self.metrics.totals(
            prae_ticks_total=self.ticks,
            prae_ticks_late_total=self.timing.late,
            prae_fallback_ticks_total=self.fallback_ticks,
            prae_hot_swaps_total=len(self.swaps),
            prae_retrain_runs_total=self.retrain_runs,
        )
        views = {
            name: WorkloadView(
                running=not tr.finished,
                usage=tr.live.values[-1] if len(tr.live) else None,
                forecast=tr.pending[-1].quantiles if tr.pending else None,
                reserved=self.held.get(name, (0.0, 0.0)),
            )
            for name, tr in self.trackers.items()
        }
        points = self.metrics.points(
            tick_seconds=self.timing.last,
            model_version=self.model_version,
            pending_rows=self.store.pending_rows(),
            workloads=views,
        )
        self.metrics_sink.publish(points)

    def _save_choices(self, now: float) -> None:
        """Each workload's point-forecast choice, for its next run (``prae.engine.choices``)."""
        for name, tr in self.trackers.items():
            record = tr.choice_record()
            if record.count.any():
                self.store.append("choices", name, choice_rows(record, now))

    def _poll_quietly(self) -> None:
        try:
            self._poll()
        except Exception as exc:  # a dead supervisor must not lose the rows we already have
            log.warning("final telemetry poll failed: %s", exc)
