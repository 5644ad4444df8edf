"""How a run's forecasts followed its workloads' live samples, read back from its store:
what the end-to-end tests hold a run to, and what they print when it falls short."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds


@dataclass(frozen=True)
class ForecastTimeline:
    samples: int  # live samples stored
    issued: int  # forecasts issued (one per issue time)
    resolved: int  # of them, with an actual
    first_after_s: float  # first forecast, seconds after the first live sample
    longest_gap_s: float  # the longest time between two forecasts
    gap_at_s: float  # when that gap began, seconds after the first live sample
    span_s: float  # first to last live sample

    def text(self) -> str:
        return (
            f"{self.resolved}/{self.issued} resolved/issued of {self.samples} samples over {self.span_s:.0f} s;"
            f" first forecast +{self.first_after_s:.1f} s; longest gap {self.longest_gap_s:.1f} s"
            f" at +{self.gap_at_s:.0f} s"
        )


def forecast_timelines(store: Path) -> dict[str, ForecastTimeline]:
    """Per workload, read with pyarrow as a user would."""
    tel = ds.dataset(store / "telemetry", format="parquet", partitioning="hive").to_table()
    tel = tel.filter(pc.equal(tel["role"], "live"))
    fc = ds.dataset(store / "forecasts", format="parquet", partitioning="hive").to_table()
    fc = fc.filter(pc.equal(fc["resource"], "cpu"))
    out = {}
    for name in sorted(set(tel["workload"].to_pylist())):
        ts = np.sort(tel.filter(pc.equal(tel["workload"], name))["ts"].to_numpy())
        mine = fc.filter(pc.equal(fc["workload"], name))
        issued = np.sort(mine["issued_at"].to_numpy())
        actual = mine["actual"].to_numpy(zero_copy_only=False).astype(float)
        gaps = np.diff(issued) if len(issued) > 1 else np.zeros(1)
        k = int(np.argmax(gaps))
        out[name] = ForecastTimeline(
            samples=len(ts),
            issued=len(issued),
            resolved=int(np.isfinite(actual).sum()),
            first_after_s=float(issued[0] - ts[0]) if len(issued) else float("inf"),
            longest_gap_s=float(gaps[k]),
            gap_at_s=float(issued[k] - ts[0]) if len(issued) else 0.0,
            span_s=float(ts[-1] - ts[0]),
        )
    return out


def shortfalls(timelines: dict[str, ForecastTimeline], lead_steps: int, share: float = 0.6) -> list[str]:
    """The workloads whose resolved forecasts fell below ``share`` of what their own live
    samples allow (a forecast per sample from the third, none resolving in the last lead),
    each as one line. How long a run lasts depends on the machine, so the bound is the
    run's own samples, not a constant; the lines say where the forecasts went missing."""
    return [
        f"{name}: {tl.text()}"
        for name, tl in timelines.items()
        if tl.samples <= lead_steps + 3 or tl.resolved < share * (tl.samples - lead_steps - 3)
    ]
