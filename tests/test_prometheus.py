"""The engine's metrics in a real Prometheus: Ray's agent exports what the engine publishes,
a Prometheus server (started here, on free ports) scrapes it, and every query of the
Grafana dashboard (configs/grafana/prae.json) returns data. ``make test`` installs Debian's
prometheus package where none is on PATH."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from prae.testing.local_cluster import free_port
from tests.test_metrics import DASHBOARD

pytestmark = pytest.mark.ray

PROMETHEUS = shutil.which("prometheus")


PUBLISHER = """
import sys, threading, numpy as np, ray
from prae.engine.metrics import EngineMetrics, WorkloadView
from prae.engine.ray_metrics import ActorMetricsSink
ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=100 * 1024**2,
         _metrics_export_port=int(sys.argv[1]), _system_config={"metrics_report_interval_ms": 1000})
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
sink, metrics, ticks = ActorMetricsSink("prae-test-metrics"), EngineMetrics(), 0
q = np.tile(np.array([0.5, 1.0, 1.5, 1.7, 2.0]), (4, 1))
print("publishing", flush=True)
while not stop.wait(1.0):  # as a running engine publishes, until the test closes our stdin
    ticks += 5
    for name in ("etl", "replay"):
        actual = 1.0 if ticks % 10 else 2.0  # inside the 80 % interval every other time
        metrics.resolved(name, [{"resource": r, "q0.1": 0.5, "q0.9": 1.5, "actual": actual} for r in ("cpu", "mem")])
    metrics.totals(prae_ticks_total=ticks, prae_ticks_late_total=ticks // 5, prae_fallback_ticks_total=ticks // 10,
                   prae_hot_swaps_total=ticks // 10, prae_retrain_runs_total=ticks // 10)
    views = {n: WorkloadView(running=True, usage=np.array([1.0, 2e9, 1e6, 1e5]), forecast=q, reserved=(2.0, 3e9))
             for n in ("etl", "replay")}
    sink.publish(metrics.points(tick_seconds=0.25, model_version="v1", pending_rows=ticks, workloads=views))
sink.close(linger_s=0.0)
ray.shutdown()
"""


@pytest.fixture(scope="module")
def ray_metrics_port():
    """A Ray driver in a process of its own that publishes the engine's metrics every second
    through the engine's metrics actor (Ray's default export is every 10 s: here every 1 s).
    Its own process, so that its Ray session (with a metrics port and a faster export) is
    not the test process's."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "publishing"
        yield port
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # it stops publishing and shuts its Ray down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # the one process this test started
            proc.wait()


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
    deadline = time.time() + 120
    while True:  # until every query has something to say
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
