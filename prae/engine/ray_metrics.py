"""The engine's metrics through ``ray.util.metrics``: exported by each node's Ray agent to
Prometheus (``ray_``-prefixed) and shown by the Ray dashboard's Grafana. The catalogue and
the points are :mod:`prae.engine.metrics`'s; this only hands them to Ray."""

from __future__ import annotations

import logging
from typing import Any

from ray.util import metrics as ray_metrics

from prae.engine.metrics import METRICS, Point

log = logging.getLogger(__name__)


class RayMetricsSink:
    """One ``ray.util.metrics`` object per catalogue entry, made on first use."""

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
