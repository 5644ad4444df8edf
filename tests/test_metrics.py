"""The engine's metric catalogue and the Grafana dashboard over it (no Ray: the loop's
publications are tested in test_loop, their export through Ray in test_engine_ray)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from prae.engine.metrics import METRICS, EngineMetrics, WorkloadView
from prae.resources import QUANTILES

DASHBOARD = Path(__file__).resolve().parents[1] / "configs" / "grafana" / "prae.json"
SELECTOR = re.compile(r"ray_(prae_[a-z0-9_]+)(\{[^}]*\})?")


def test_the_dashboard_shows_every_metric_and_only_ones_the_engine_publishes_with_their_labels():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs.append(dash["templating"]["list"][1]["definition"])
    used = set()
    for expr in exprs:
        for name, labels in SELECTOR.findall(expr):
            assert name in METRICS, (name, expr)
            used.add(name)
            for label in re.findall(r"([a-z_]+)\s*=~?", labels):
                assert label in METRICS[name].tag_keys, (name, label, expr)
        for group in re.findall(r"by \(([^)]*)\)", expr):
            keys = {k.strip() for k in group.split(",")}
            assert keys <= {k for n, _ in SELECTOR.findall(expr) for k in METRICS[n].tag_keys}, expr
    assert used == set(METRICS)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_counters_publish_what_they_added_since_the_last_publication():
    m = EngineMetrics()
    view = WorkloadView(running=True, usage=np.array([1.5, 2e9, 0.0, np.nan]), forecast=None, reserved=(2.0, 4e9))
    q = {f"q{x:g}": 1.0 for x in QUANTILES}
    m.resolved("w", [{**q, "resource": "cpu", "actual": 1.0}, {**q, "resource": "cpu", "actual": 3.0},
                     {**q, "resource": "cpu", "actual": None}])
    m.totals(prae_ticks_total=10)
    first = {(p.name, p.tags): p.value for p in m.points(tick_seconds=0.2, model_version="a", pending_rows=7, workloads={"w": view})}
    assert first[("prae_ticks_total", ())] == 10
    assert first[("prae_forecasts_resolved_total", (("resource", "cpu"), ("workload", "w")))] == 2
    assert first[("prae_forecasts_inside80_total", (("resource", "cpu"), ("workload", "w")))] == 1
    assert first[("prae_usage", (("resource", "mem"), ("workload", "w")))] == 2e9
    assert ("prae_usage", (("resource", "net"), ("workload", "w"))) not in first  # NaN: not published
    assert first[("prae_reserved", (("resource", "cpu"), ("workload", "w")))] == 2.0
    m.totals(prae_ticks_total=15)
    second = {(p.name, p.tags): p.value for p in m.points(tick_seconds=0.3, model_version="b", pending_rows=0, workloads={})}
    assert second[("prae_ticks_total", ())] == 5  # the increase, not the total
    assert ("prae_forecasts_resolved_total", (("resource", "cpu"), ("workload", "w"))) not in second
    assert second[("prae_model_info", (("version", "a"),))] == 0.0 and second[("prae_model_info", (("version", "b"),))] == 1.0
