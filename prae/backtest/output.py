"""Write a BacktestResult to --out DIR.

forecasts.parquet  one row per (series, issue step, resource) after the first hour:
                   series_id, issued_at, target_ts (seconds; target_ts - issued_at =
                   the lead), resource, q0.1 .. q0.99 (calibrated), alloc (PRAE's
                   violation-budget reservation for the target), alloc_level (the
                   quantile level it chose), actual (usage at target_ts, NaN if
                   not observed)
baselines.parquet  the same rows: series_id, issued_at, target_ts, resource and one
                   column per baseline (its value for the target)
summary.csv / summary.txt / goals.csv / run.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from prae.backtest.runner import BacktestResult
from prae.json_out import strict_dumps
from prae.resources import QUANTILE_COLUMNS, RESOURCES


def _key_columns(
    result: BacktestResult, s: np.ndarray, t: np.ndarray, r: np.ndarray
) -> dict[str, pa.Array]:
    g = result.grid
    issued = g.starts[s] + (t - g.offsets[s]) * g.step_s
    target = issued + result.lead_steps * g.step_s
    integral = np.all(np.mod(issued, 1.0) == 0) and float(g.step_s).is_integer()
    if integral:
        issued_arr, target_arr = (
            pa.array(issued.astype(np.int64)),
            pa.array(target.astype(np.int64)),
        )
    else:
        issued_arr, target_arr = pa.array(issued), pa.array(target)
    return {
        "series_id": pc.take(pa.array(list(g.series_ids), pa.string()), pa.array(s)),
        "issued_at": issued_arr,
        "target_ts": target_arr,
        "resource": pc.take(pa.array(list(RESOURCES), pa.string()), pa.array(r)),
    }


def forecast_table(result: BacktestResult) -> pa.Table:
    s, t, r = np.nonzero(result.emitted())  # C order: series, issue time, resource
    cols = _key_columns(result, s, t, r)
    for k, name in enumerate(QUANTILE_COLUMNS):
        cols[name] = pa.array(result.calibrated[s, t, r, k].astype(np.float64))
    cols["alloc"] = pa.array(result.alloc[result.config.violation_target][s, t, r])
    cols["alloc_level"] = pa.array(result.level[s, t, r])
    cols["actual"] = pa.array(result.actual[s, t, r])
    return pa.table(cols)


def baseline_table(result: BacktestResult) -> pa.Table:
    s, t, r = np.nonzero(result.emitted())
    cols = _key_columns(result, s, t, r)
    for name, v in result.baselines.items():
        cols[name] = pa.array(v[s, t, r])
    return pa.table(cols)


def write_outputs(
    result: BacktestResult,
    out: Path,
    table: pd.DataFrame,
    goal: pd.DataFrame,
    text: str,
    extra: dict[str, Any] | None = None,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(forecast_table(result), out / "forecasts.parquet", compression="zstd")
    pq.write_table(baseline_table(result), out / "baselines.parquet", compression="zstd")
    table.to_csv(out / "summary.csv", index=False)
    goal.to_csv(out / "goals.csv", index=False)
    (out / "summary.txt").write_text(text + "\n")
    cfg = result.config
    run = {
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "n_series": len(result.grid.series_ids),
        "step_s": result.grid.step_s,
        "lead_steps": result.lead_steps,
        "model_versions": [{"from_s": a, "version": v} for a, v in result.versions],
        "retraining": result.train_log,
        "timings_s": result.timings,
        **(extra or {}),
    }
    (out / "run.json").write_text(strict_dumps(run) + "\n")
