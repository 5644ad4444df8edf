"""``prae run``: connect to (or embed) Ray, start the pieces, run the loop, report.

Under ``ray job submit`` the driver finds the cluster through ``RAY_ADDRESS``; on its own it
starts an embedded local Ray (``address="local"``, never a cluster someone left running).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import ray

from prae.config import PraeConfig
from prae.engine.loop import EngineLoop
from prae.engine.ray_metrics import ActorMetricsSink
from prae.engine.ray_ports import RayAllocator, RayRetrainer, RayTelemetrySource, ServeForecaster
from prae.engine.summary import RunSummary, format_table, rows_of_run, summarise_workload
from prae.report.page import write_report
from prae.store.feedback import FeedbackStore
from prae.workloads.history import from_telemetry, plays_history

log = logging.getLogger(__name__)

NAMESPACE = "prae"


def init_ray(config: PraeConfig, address: str | None = None, dashboard: bool = True) -> bool:
    """Connect or embed. Returns True when this call started Ray (and so must stop it)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
        return True
    ray.init(
        address="local",
        namespace=NAMESPACE,
        num_cpus=config.run.ray_num_cpus,
        include_dashboard=dashboard,
        log_to_driver=False,
        object_store_memory=300 * 1024**2,
    )
    return True


def with_overrides(config: PraeConfig, *, store_dir: str | None = None, observe_only: bool = False) -> PraeConfig:
    if store_dir:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, store_dir=store_dir))
    if observe_only:
        config = dataclasses.replace(config, allocator=dataclasses.replace(config.allocator, enabled=False))
    return config


def run(config: PraeConfig, duration_s: float | None = None, keep_serving: bool = False) -> RunSummary:
    """Run the loop on the current Ray cluster (``init_ray`` first) and return its summary."""
    from ray import serve

    from serve_apps.predictor_app import APP_NAME

    run_dir = Path(config.run.store_dir).resolve().parent
    store_root = Path(config.run.store_dir).resolve()
    # One prefix names every actor and placement group of this run: easy to audit, and a
    # restarted run finds (and removes) what a crashed one left behind.
    prefix = f"prae-{config.run.name}-"
    store = FeedbackStore(store_root)
    started_at = time.time()  # before the workloads start: their first samples come after it
    forecaster = ServeForecaster(config.predictor, config.run.horizon_steps)
    allocator = RayAllocator(config, prefix, store=store)
    retrainer = RayRetrainer(config, store_root, run_dir / "models", config.predictor.checkpoint)
    histories = {w.name: from_telemetry(store.read("telemetry", w.name)) for w in config.workloads if plays_history(w)}
    telemetry = RayTelemetrySource(config, run_dir / "work", prefix, histories)
    metrics = ActorMetricsSink(f"{prefix}metrics")
    loop = EngineLoop(config, telemetry, forecaster, allocator, store, retrainer, metrics=metrics)
    t0 = time.time()
    try:
        loop.run(duration_s if duration_s is not None else config.run.duration_s)
    finally:
        telemetry.kill()
        metrics.close()  # after the final publication is exported
        if not keep_serving:
            serve.delete(APP_NAME)
    allocator.records()  # the reservations still open go to the store too
    store.flush()
    summary = build_summary(loop, store, forecaster.replica_ids, time.time() - t0, retrainer, started_at)
    summary = dataclasses.replace(
        summary,
        extra={
            **summary.extra,
            "resizes": allocator.resize_summary(),
            "mode": "reserve" if config.allocator.enabled else "observe-only (reserved = would have reserved)",
            "started_at": started_at,  # which of the store's rows are this run's
        },
    )
    (run_dir / "summary.json").write_text(summary.to_json())
    try:
        log.info("report: %s", write_report(run_dir))
    except Exception as exc:  # the run's results are in the store and summary.json already
        log.warning("could not write the HTML report: %r", exc)
    return summary


def build_summary(
    loop: EngineLoop,
    store: FeedbackStore,
    replicas: set[str],
    seconds: float,
    retrainer: RayRetrainer | None = None,
    started_at: float | None = None,
) -> RunSummary:
    """From the store; with ``started_at``, only the forecasts this run issued and the
    reservations it wrote."""
    forecasts = store.read("forecasts")
    reservations = store.read("reservations")
    if started_at is not None:
        forecasts = rows_of_run(forecasts, started_at)
        reservations = rows_of_run(reservations, started_at, "written_at")
    wl_col = forecasts.column("workload").to_numpy(zero_copy_only=False) if forecasts.num_rows else None
    records: dict[str, list[dict[str, Any]]] = {}
    for rec in reservations.to_pylist():
        records.setdefault(rec["workload"], []).append(rec)
    out = []
    for name, tr in loop.trackers.items():
        rows = forecasts.filter(wl_col == name) if wl_col is not None else forecasts
        out.append(
            summarise_workload(
                name,
                rows,
                records.get(name, []),
                tr.live_status.exit_code,
                tr.live_status.cost_cpu_seconds,
                tr.shadow_status.cost_cpu_seconds,
                tr.shadow_status.error,
                tr.live_status.result,
            )
        )
    versions = tuple(dict.fromkeys([s.version_before for s in loop.swaps] + [s.version_after for s in loop.swaps]))
    return RunSummary(
        workloads=tuple(out),
        hot_swaps=len(loop.swaps),
        model_versions=versions or ((loop.model_version,) if loop.model_version else ()),
        predictor_replicas=len(replicas),
        extra={
            "seconds": round(seconds, 1),
            "ticks": loop.ticks,
            "fallback_ticks": loop.fallback_ticks,
            "tick_timing": loop.timing.summary(),
            "retrain_runs": loop.retrain_runs,
            "retrain_results": retrainer.results if retrainer else [],
            "store": str(store.root),
        },
    )


def print_summary(summary: RunSummary) -> None:
    print(format_table(summary), flush=True)
