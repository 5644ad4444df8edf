"""The whole loop on local Ray: real workloads and shadows, the Serve predictor, placement
groups, the Parquet store, Ray Train retraining and a hot swap — one Ray for the module."""

from __future__ import annotations

import dataclasses
import os
import time
import urllib.request

import numpy as np
import pyarrow.dataset as ds
import pytest
from prometheus_client.parser import text_string_to_metric_families

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.util.placement_group import placement_group_table  # noqa: E402

from prae.config import parse_config  # noqa: E402
from prae.engine.ray_ports import train_actors_alive  # noqa: E402
from prae.engine.runner import NAMESPACE, run  # noqa: E402
from prae.engine.tick_timing import timing_text  # noqa: E402
from prae.testing.forecast_timeline import forecast_timelines, shortfalls  # noqa: E402
from prae.testing.local_cluster import free_port  # noqa: E402
from tests.fakes import process_alive  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


METRICS_PORT = free_port()  # where this node's Ray agent serves every metric, as Prometheus scrapes it


@pytest.fixture(scope="module")
def local_ray():
    ray.init(
        address="local", num_cpus=8, include_dashboard=False, object_store_memory=300 * 1024**2, namespace=NAMESPACE,
        _metrics_export_port=METRICS_PORT,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


def small_config(tmp_path, retrain_every_s=10.0):
    return parse_config(
        {
            "run": {
                "name": "itest",
                "interval_s": 1.0,
                "window_steps": 16,
                "horizon_steps": 3,
                "store_dir": str(tmp_path / "store"),
                "duration_s": 240,
            },
            "retrain": {"every_s": retrain_every_s, "min_rows": 10, "epochs": 1, "num_workers": 1},
            "allocator": {"cpu_budget": 4, "hysteresis": 0.1},
            "workloads": [
                {
                    "name": "etl",
                    "kind": "etl",
                    "params": {"rows": 3_000_000, "partitions": 8, "customers": 50_000},
                    "resources": {"cpu": 1},
                    "shadow": {"mode": "sample", "fraction": 0.05, "resources": {"cpu": 0.25}},
                    "profile": {"priority": 1},
                },
                {
                    # A replay lasts steps x step_s whatever the machine's speed: the run is
                    # long enough for retraining to finish and the new model to forecast.
                    # Here the first retraining took 41 s and swapped ~55 s into an 88-s run;
                    # on CI's machine it once swapped 2 s before an 80-step replay ended.
                    "name": "replay",
                    "kind": "replay",
                    "params": {"trace": "bitbrains:41", "start": 3510, "steps": 140, "step_s": 1.0},
                    "resources": {"cpu": 1},
                    "shadow": {"mode": "sample", "fraction": 0.05, "resources": {"cpu": 0.25}},
                },
                {
                    # Ray-native: its tasks go into its reservation's bundles (0.5-CPU units).
                    "name": "tasks",
                    "kind": "tasks",
                    "params": {"stages": "1x8,2x24,1x8", "task_cpu": 0.5, "task_s": 2.0, "task_mem_mb": 32},
                    "resources": {"cpu": 0.1},
                    "shadow": {"mode": "sample", "fraction": 0.1, "resources": {"cpu": 0.25}},
                    "profile": {"priority": 2},
                },
            ],
        },
        "itest.yaml",
    )


def scrape_prae(port: int) -> dict[tuple[str, frozenset], float]:
    """PRAE's samples on a Ray node's metrics endpoint: (name, PRAE's own labels) -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("ray_prae_"):
                labels = frozenset((k, v) for k, v in s.labels.items() if k in ("workload", "resource", "quantile", "version"))
                out[(s.name, labels)] = out.get((s.name, labels), 0.0) + s.value  # summed over processes
    return out


def test_demo_loop_end_to_end(local_ray, tmp_path):
    # Retraining every 45 s: by then the replay and the tasks job have >= 40 live rows each
    # (the ETL may be done, on a fast machine in ~10 s), so their newest 20 % give the 16
    # held-out windows a verdict needs; the run lasts 140 s, so the first retraining ends
    # well before it.
    cfg = small_config(tmp_path, retrain_every_s=45.0)
    summary = run(cfg)

    # the workloads ran to completion and were forecast while running
    by_name = {w.workload: w for w in summary.workloads}
    assert set(by_name) == {"etl", "replay", "tasks"}
    assert all(w.exit_code == 0 for w in summary.workloads), summary
    # forecast while running: against each run's own samples (the ETL may last ~10 s)
    short = shortfalls(forecast_timelines(tmp_path / "store"), lead_steps=3)
    assert not short, (short, timing_text(summary.extra["tick_timing"]))

    # the feedback store: telemetry of both roles, forecasts with actuals, per workload
    store = tmp_path / "store"
    tel = ds.dataset(store / "telemetry", format="parquet", partitioning="hive").to_table()
    for name in ("etl", "replay", "tasks"):
        mine = tel.filter(ds.field("workload") == name)
        roles = set(mine.column("role").to_pylist())
        assert roles == {"live", "shadow"}, (name, roles)
        live = mine.filter(ds.field("role") == "live")
        assert np.nanmax(live.column("cpu").to_numpy()) > 0.1  # real CPU, measured from /proc
        assert np.nanmax(live.column("mem").to_numpy()) > 50e6
    fc = ds.dataset(store / "forecasts", format="parquet", partitioning="hive").to_table()
    assert fc.num_rows > 0
    actual = fc.column("actual").to_numpy(zero_copy_only=False)
    assert np.isfinite(actual.astype(float)).sum() > 20

    # placement groups were created for reservations, and all removed at the end
    assert sum(w.reservations for w in summary.workloads) >= 2
    ours = [
        info for info in placement_group_table().values() if (info.get("name") or "").startswith("prae-itest-")
    ]
    assert ours, "the run created no named placement groups"
    assert all(info["state"] == "REMOVED" for info in ours), [(i["name"], i["state"]) for i in ours]
    # ... and each has one row in the store's reservations table, which the summary counts
    rows = ds.dataset(store / "reservations", format="parquet", partitioning="hive").to_table().to_pylist()
    assert sorted(r["name"] for r in rows) == sorted(i["name"] for i in ours if i["name"].startswith("prae-itest-res-"))
    assert {r["state"] for r in rows} == {"removed"}
    for w in summary.workloads:
        mine = [r for r in rows if r["workload"] == w.workload]
        assert (w.reservations, w.in_place_before_need) == (len(mine), sum(r["in_place_before_need"] for r in mine))

    # the Ray-native job's tasks ran inside its reservation once there was one
    tasks = by_name["tasks"].live_result
    assert tasks is not None and tasks["tasks"] == 4 + 2 * 12 + 4, tasks
    assert tasks["in_reservation"] >= 1, tasks
    assert by_name["tasks"].reservations >= 1

    # retraining ran on Ray Train; each finished run was judged against the serving model on
    # the workloads' newest rows, held out of its training, and exactly the promoted ones
    # were hot-swapped into the same replica
    # (a retraining on too few rows holds out too few for a 12-step target window: it is
    # judged on nothing and not promoted)
    judged = [r for r in summary.extra["retrain_results"] if "verdict" in r]
    compared = [r for r in judged if r["verdict"]["holdout_windows"] >= 16]
    assert compared, summary.extra["retrain_results"]
    for r in judged:
        v = r["verdict"]
        significant = v["champion_loss"] - v["challenger_loss"] > 2 * v["gain_se"]
        assert r["promote"] == (v["holdout_windows"] >= 16 and significant), r
    for r in compared:
        v = r["verdict"]
        assert np.isfinite([v["champion_loss"], v["challenger_loss"], v["gain_se"]]).all(), r
        assert r["metrics"]["windows"] > v["holdout_windows"]  # it trained on the rest
    promoted = [r["checkpoint"] for r in judged if r["promote"]]
    assert summary.hot_swaps == len(promoted), summary.extra
    assert len(summary.model_versions) == 1 + len(promoted)
    if promoted:  # the swapped-in model forecast
        assert len(set(fc.column("model_version").to_pylist())) >= 2, summary.extra
    assert summary.predictor_replicas == 1

    # a retraining still running at the end was cancelled: no Train actor outlives the run
    assert train_actors_alive() == []

    # the engine's metrics reached the node's Prometheus endpoint (Ray exports every ~10 s):
    # the run's totals, each workload's resolved forecasts as the store has them, and the
    # gauges as the run left them
    rows = fc.to_pylist()
    want = {("ray_prae_ticks_total", frozenset()): summary.extra["ticks"]}
    for name in by_name:
        mine = [r for r in rows if r["workload"] == name and r["resource"] == "cpu" and r["actual"] is not None]
        want[("ray_prae_forecasts_resolved_total", frozenset({("workload", name), ("resource", "cpu")}))] = len(mine)
        want[("ray_prae_workload_running", frozenset({("workload", name)}))] = 0.0
        want[("ray_prae_reserved", frozenset({("workload", name), ("resource", "cpu")}))] = 0.0
    deadline = time.time() + 60
    while True:
        got = scrape_prae(METRICS_PORT)
        if all(got.get(k) == v for k, v in want.items()) or time.time() > deadline:
            break
        time.sleep(2)
    assert {k: got.get(k) for k in want} == want
    assert got.get(("ray_prae_hot_swaps_total", frozenset()), 0.0) == summary.hot_swaps
    assert sum(v for (n, _), v in got.items() if n == "ray_prae_model_info") == 1.0
    assert any(n == "ray_prae_usage" and v > 0 for (n, _), v in got.items())
    # ... and the metrics actor ends itself once they were exported: nothing of the run is left
    deadline = time.time() + 60
    while [n for n in ray.util.list_named_actors() if n.startswith("prae-itest-metrics-")]:
        assert time.time() < deadline, ray.util.list_named_actors()
        time.sleep(1)


def test_summary_counts_only_this_runs_forecasts(local_ray, tmp_path):
    """The store is kept across runs (retraining learns from all of them); a second run on
    it reports its own forecasts, not the first run's too."""
    cfg = small_config(tmp_path, retrain_every_s=1000.0)
    cfg = dataclasses.replace(cfg, workloads=cfg.workloads[1:2])  # the replay: fixed length
    cfg = dataclasses.replace(
        cfg,
        workloads=(dataclasses.replace(cfg.workloads[0], params={**cfg.workloads[0].params, "steps": 15}),),
    )
    first = run(cfg)
    second = run(cfg)
    n1, n2 = first.workloads[0].forecasts, second.workloads[0].forecasts
    assert n1 >= 5 and n2 >= 5
    assert n2 < 1.5 * n1, (n1, n2)  # not n1 + n2
    fc = ds.dataset(tmp_path / "store" / "forecasts", format="parquet", partitioning="hive").to_table()
    assert fc.num_rows // 4 >= n1 + n2  # both runs are in the store
    # the same for its reservations: both runs' are in the store, each run counts its own
    res = ds.dataset(tmp_path / "store" / "reservations", format="parquet", partitioning="hive").to_table()
    r1, r2 = first.workloads[0].reservations, second.workloads[0].reservations
    assert r1 >= 1 and r2 >= 1 and res.num_rows == r1 + r2, (r1, r2, res.num_rows)


def test_a_history_shadow_plays_the_previous_run(local_ray, tmp_path):
    """``shadow: {mode: simulate, source: history}``: the first run has no previous one,
    so no shadow (and says so); the second run's shadow plays the first run's live curve.
    The allocator runs on a violation budget here: the live path of the backtest's policy."""
    cfg = parse_config(
        {
            "run": {
                "name": "ihist",
                "interval_s": 0.5,
                "window_steps": 16,
                "horizon_steps": 3,
                "store_dir": str(tmp_path / "store"),
                "duration_s": 120,
            },
            "retrain": {"enabled": False},
            "allocator": {"cpu_budget": 2, "violation_budget": 0.05},
            "workloads": [
                {
                    "name": "tr",
                    "kind": "train",
                    # ~5 s of training after torch's import: forecasts 1.5 s ahead must
                    # resolve before it ends (3 epochs took 0.5 s on a fast CI machine)
                    "params": {"samples": 40_000, "epochs": 30, "hidden": 128},
                    "resources": {"cpu": 1},
                    "shadow": {"mode": "simulate", "source": "history", "fraction": 0.1, "resources": {"cpu": 0.25}},
                }
            ],
        },
        "ihist.yaml",
    )
    first = run(cfg)
    assert first.workloads[0].exit_code == 0
    assert first.workloads[0].forecasts >= 1  # ticks that forecast went through the budget
    assert "no complete live run of 'tr'" in (first.workloads[0].shadow_error or "")
    tel = ds.dataset(tmp_path / "store" / "telemetry", format="parquet", partitioning="hive").to_table()
    assert set(tel.column("role").to_pylist()) == {"live"}

    second = run(cfg)
    assert second.workloads[0].exit_code == 0
    assert second.workloads[0].shadow_error is None, second.workloads[0].shadow_error
    assert second.workloads[0].shadow_cost_ratio > 0
    tel = ds.dataset(tmp_path / "store" / "telemetry", format="parquet", partitioning="hive").to_table()
    shadow = tel.filter(ds.field("role") == "shadow")
    assert shadow.num_rows > 5
    assert np.nanmax(shadow.column("progress").to_numpy(zero_copy_only=False).astype(float)) > 0.9


def test_live_runs_start_together_and_an_unplaceable_shadow_is_dropped(local_ray, tmp_path):
    """'a' has a shadow on a node pool no node has; 'b' has none. Neither live run waits
    for that shadow longer than ``shadow_wait_s``, both start together and are sampled on
    the same grid; the shadow is dropped with a note after its start timeout, and the live
    run is not touched."""
    from prae.engine.ray_ports import RayTelemetrySource

    shadow = {"mode": "sample", "custom_resource": "no-such-pool", "resources": {"cpu": 0.1}}
    cfg = parse_config(
        {
            "run": {"name": "starts", "interval_s": 0.5, "store_dir": str(tmp_path / "store")},
            "workloads": [
                {"name": "a", "kind": "command", "entrypoint": "sleep 6", "resources": {"cpu": 0.1}, "shadow": shadow},
                {"name": "b", "kind": "command", "entrypoint": "sleep 6", "resources": {"cpu": 0.1},
                 "shadow": {"mode": "none"}},
            ],
        },
        "starts.yaml",
    )
    t0 = time.time()
    source = RayTelemetrySource(cfg, tmp_path / "work", "prae-starts-", shadow_wait_s=1.0, shadow_start_timeout_s=3.0)
    started = time.time() - t0
    try:
        samples: dict[str, list] = {"a": [], "b": []}
        notes, codes = {}, {}
        deadline = time.time() + 60
        while len(codes) < 2 and time.time() < deadline:
            for name, polled in source.poll().items():
                samples[name] += polled.live
                notes[name] = polled.shadow_status.error
                if polled.live_status.exit_code is not None:
                    codes[name] = polled.live_status.exit_code
            time.sleep(0.5)
    finally:
        source.stop()
        source.kill()
    assert started < 30, started  # not the 60 s of a shadow that never comes up
    assert codes == {"a": 0, "b": 0}
    first = {n: s[0].ts for n, s in samples.items()}
    assert abs(first["a"] - first["b"]) < 0.01, first  # the same first grid point
    for s in samples.values():
        assert np.allclose(np.diff([x.ts for x in s]), 0.5, atol=0.1), [x.ts for x in s]
    assert "shadow failed to start" in (notes["a"] or "") and "3 s" in notes["a"], notes
    assert notes["b"] is None


def test_a_killed_supervisor_leaves_no_workload_running(local_ray, tmp_path):
    """A supervisor that dies takes its hosts with it (Ray kills the actors it owns) and the
    hosts' lifelines take the workloads: nothing runs on unwatched."""
    from prae.engine.ray_ports import RayTelemetrySource

    entry = "sh -c 'echo $$ > \"$PRAE_WORK_DIR/pid\"; exec sleep 120'"
    cfg = parse_config(
        {
            "run": {"name": "orphans", "interval_s": 0.5, "store_dir": str(tmp_path / "store")},
            "workloads": [
                {"name": "a", "kind": "command", "entrypoint": entry, "resources": {"cpu": 0.1},
                 "shadow": {"mode": "none"}},
            ],
        },
        "orphans.yaml",
    )
    source = RayTelemetrySource(cfg, tmp_path / "work", "prae-orphans-")
    pid_file = tmp_path / "work" / "a" / "live" / "pid"
    deadline = time.time() + 30
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    assert process_alive(pid)
    ray.kill(source.supervisors["a"])
    deadline = time.time() + 20
    while process_alive(pid) and time.time() < deadline:
        time.sleep(0.2)
    gone = not process_alive(pid)
    if not gone:
        os.kill(pid, 9)  # our own workload: do not leave it behind
    assert gone
