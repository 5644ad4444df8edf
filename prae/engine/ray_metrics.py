"""The engine's metrics through ``ray.util.metrics``: exported by each node's Ray agent to
Prometheus (``ray_``-prefixed) and shown by the Ray dashboard's Grafana. The catalogue and
the points are :mod:`prae.engine.metrics`'s; this only hands them to Ray.

The metric objects live in a named actor (``prae-<run>-metrics-<id>``), not in the engine's
driver: Ray's OpenTelemetry gauges can crash a process at exit (ray#60048, a gauge callback
racing the shutdown), and a driver that exits with SIGSEGV after a good run fails its
``ray job submit``. CI saw a test process that had published from the driver die so, after
all its tests passed. An actor's exit is Ray's business.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import ray
from ray.util import metrics as ray_metrics

from prae.engine.metrics import METRICS, Point

log = logging.getLogger(__name__)
# Ray's agent exports every 10 s: the actor outlives the run's last publication this long,
# so the final values (nothing held, nothing running) reach Prometheus.
LINGER_S = 15.0


class MetricsPublisher:
    """The metrics actor's class: one ``ray.util.metrics`` object per catalogue entry, made on
    first use, and the actor's own orderly end."""

    def __init__(self) -> None:
        self._objects: dict[str, Any] = {}

    def _metric(self, name: str) -> Any:
        obj = self._objects.get(name)
        if obj is None:
            d = METRICS[name]
            cls = ray_metrics.Counter if d.kind == "counter" else ray_metrics.Gauge
            obj = self._objects[name] = cls(name, description=d.description, tag_keys=d.tag_keys)
        return obj

    def publish(self, points: list[Point]) -> None:
        try:
            for p in points:
                m = self._metric(p.name)
                tags = p.tag_dict or None
                if METRICS[p.name].kind == "counter":
                    m.inc(p.value, tags=tags)
                else:
                    m.set(p.value, tags=tags)
        except Exception as exc:  # metrics must never stop the engine
            log.warning("could not publish metrics: %r", exc)

    def retire(self, linger_s: float) -> None:
        """Exit after ``linger_s``, once Ray's agent has exported the final values. The actor
        ends itself: a driver thread that called ``ray.kill`` later could find Ray shut down,
        and ``ray.kill`` then starts a new local Ray (seen in CI: the next test's ``ray.init``
        failed against it)."""
        time.sleep(linger_s)
        ray.actor.exit_actor()


MetricsActor = ray.remote(num_cpus=0, max_restarts=-1)(MetricsPublisher)


class ActorMetricsSink:
    """The loop's ``MetricsSink`` on Ray: each publication is sent to the metrics actor and
    not waited for (a tick never waits for metrics; one lost with a dying actor is a gap in
    the counters' increase, which Prometheus's ``rate`` bridges)."""

    def __init__(self, name: str) -> None:
        """``name``: the actor's, for the dashboard; a suffix makes it this run's alone (a
        previous run's may still linger)."""
        self.actor = MetricsActor.options(name=f"{name}-{uuid.uuid4().hex[:8]}").remote()
        self._last: Any = None

    def publish(self, points: list[Point]) -> None:
        self._last = self.actor.publish.remote(points)

    def close(self, linger_s: float = LINGER_S) -> None:
        """Wait for the last publication, then tell the actor to exit ``linger_s`` later (the
        run's end does not wait for that; a Ray shut down sooner takes the actor with it)."""
        try:
            if self._last is not None:
                ray.get(self._last, timeout=30)
            self.actor.retire.remote(linger_s)
        except Exception as exc:
            log.warning("the metrics actor did not take the last publication or its end: %r", exc)
