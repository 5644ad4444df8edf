"""The engine's metrics in a real Prometheus: Ray's agent exports what the engine publishes,
a Prometheus server (started here, on free ports) scrapes it, and every query of the
Grafana dashboard (configs/grafana/prae.json) returns data. ``make test`` installs Debian's
prometheus package where none is on PATH."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402

from prae.engine.metrics import EngineMetrics, WorkloadView  # noqa: E402
from prae.engine.ray_metrics import RayMetricsSink  # noqa: E402
from prae.resources import QUANTILES  # noqa: E402
from prae.testing.local_cluster import free_port  # noqa: E402
from tests.test_metrics import DASHBOARD  # noqa: E402

pytestmark = pytest.mark.ray

PROMETHEUS = shutil.which("prometheus")


@pytest.fixture(scope="module")
def ray_metrics_port():
    port = free_port()
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2,
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": 1000},  # Ray's default: every 10 s
    )
    try:
        yield port
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, ray_metrics_port):
    assert PROMETHEUS, "no prometheus on PATH: run `make test` (it installs Debian's package) or apt-get install prometheus"
    d = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    (d / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: ray\n    static_configs: [{{targets: ['127.0.0.1:{ray_metrics_port}']}}]\n"
    )
    with open(d / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()  # only the server this test started
            proc.wait(timeout=30)


def query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # a query Prometheus refuses: say which and why
        raise AssertionError(f"{expr}: {exc.read().decode()[:500]}") from exc
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


COVERAGE = (
    'sum by (workload, resource) (rate(ray_prae_forecasts_inside80_total{workload="etl"}[5m])) / '
    'sum by (workload, resource) (rate(ray_prae_forecasts_resolved_total{workload="etl"}[5m]))'
)


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(Path(DASHBOARD).read_text())
    return [(p["title"], t["expr"].replace("$workload", ".*")) for p in dash["panels"] for t in p["targets"]]


def test_prometheus_scrapes_the_engines_metrics_and_every_dashboard_query_returns_data(prometheus):
    sink, metrics = RayMetricsSink(), EngineMetrics()
    q = np.tile(np.array([0.5, 1.0, 1.5, 1.7, 2.0]), (4, 1))
    assert q.shape[1] == len(QUANTILES)
    deadline = time.time() + 120
    ticks = 0
    while True:  # publish as a running engine does, until every query has something to say
        ticks += 5
        for name in ("etl", "replay"):
            actual = 1.0 if ticks % 10 else 2.0  # inside the 80 % interval every other time
            metrics.resolved(name, [{"resource": r, "q0.1": 0.5, "q0.9": 1.5, "actual": actual} for r in ("cpu", "mem")])
        metrics.totals(prae_ticks_total=ticks, prae_ticks_late_total=ticks // 5, prae_fallback_ticks_total=ticks // 10,
                       prae_hot_swaps_total=ticks // 10, prae_retrain_runs_total=ticks // 10)
        views = {
            name: WorkloadView(running=True, usage=np.array([1.0, 2e9, 1e6, 1e5]), forecast=q, reserved=(2.0, 3e9))
            for name in ("etl", "replay")
        }
        sink.publish(metrics.points(tick_seconds=0.25, model_version="v1", pending_rows=ticks, workloads=views))
        try:
            empty = [(title, expr) for title, expr in dashboard_queries() if not query(prometheus, expr)]
            coverage = query(prometheus, COVERAGE)
        except OSError:  # the server is still starting
            empty, coverage = ["(no answer yet)"], []
        if not empty and len(coverage) == 2 and all(0.0 < float(r["value"][1]) < 1.0 for r in coverage):
            break
        assert time.time() < deadline, f"after 120 s: dashboard queries without data {empty}; coverage {coverage}"
        time.sleep(1.0)

    got = query(prometheus, 'ray_prae_reserved{workload="etl",resource="cpu"}')
    assert [float(r["value"][1]) for r in got] == [2.0]
    assert {r["metric"]["resource"] for r in coverage} == {"cpu", "mem"}  # some inside, some not (above)
