"""The generic long format: one row per (series, sample), CSV or Parquet.

Columns: ``series_id`` (any type, used as text), ``timestamp`` (seconds since the
epoch; a datetime column is converted), and any of ``cpu`` (cores), ``mem`` (bytes),
``disk`` (bytes/s), ``net`` (bytes/s). Absent resource columns are missing throughout;
empty cells and negative values are missing. Gaps and irregular sampling are allowed:
samples are averaged onto a regular ``step_s`` grid per series (default: the median
interval between consecutive samples over all series, snapped to a round step).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from prae.errors import TraceFormatError
from prae.resources import RESOURCES
from prae.traces.series import Series, resample

_FIX = (
    "give a CSV or Parquet file in long format with columns series_id, timestamp (seconds) "
    "and at least one of cpu, mem, disk, net"
)


def read_long_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise TraceFormatError(f"{path}: file not found. Fix: check the --trace path")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path)
    except Exception as e:
        raise TraceFormatError(f"{path}: cannot read ({type(e).__name__}: {e}). Fix: {_FIX}") from e
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in ("series_id", "timestamp") if c not in df.columns]
    if missing:
        raise TraceFormatError(f"{path}: missing columns {missing}. Fix: {_FIX}")
    if not any(r in df.columns for r in RESOURCES):
        raise TraceFormatError(f"{path}: no resource column (cpu, mem, disk, net). Fix: {_FIX}")
    return df


def _seconds(col: pd.Series, path: Path) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(col):
        if getattr(col.dt, "tz", None) is not None:
            col = col.dt.tz_convert("UTC").dt.tz_localize(None)
        return (col - pd.Timestamp(0)).dt.total_seconds().to_numpy(np.float64)
    ts = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
    if np.isnan(ts).all():
        raise TraceFormatError(f"{path}: column 'timestamp' has no numeric values. Fix: {_FIX}")
    return ts


_NICE_STEPS = (1, 2, 5, 10, 15, 20, 30, 60, 120, 180, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


def infer_step(timestamps: np.ndarray, groups: np.ndarray) -> float:
    """Median positive interval between consecutive samples of the same series, snapped
    to a round step within 5 % (jittered 5-min samples give 301 s -> 300 s), else to
    whole seconds (>= 1 s)."""
    order = np.lexsort((timestamps, groups))
    t, g = timestamps[order], groups[order]
    d = np.diff(t)
    d = d[(g[1:] == g[:-1]) & (d > 0)]
    if not d.size:
        return 60.0
    med = float(np.median(d))
    nice = min(_NICE_STEPS, key=lambda s: abs(s - med))
    if abs(nice - med) <= 0.05 * nice:
        return float(nice)
    return float(max(1.0, round(med)))


def load_generic(
    path: str | os.PathLike[str],
    step_s: float | None = None,
    ids: list[str] | None = None,
    limit: int | None = None,
) -> list[Series]:
    """One Series per ``series_id`` (sorted), on a regular grid."""
    path = Path(path)
    df = read_long_table(path)
    ts = _seconds(df["timestamp"], path)
    sid = df["series_id"].astype(str).to_numpy()
    values = np.full((len(df), len(RESOURCES)), np.nan)
    for r, name in enumerate(RESOURCES):
        if name in df.columns:
            values[:, r] = pd.to_numeric(df[name], errors="coerce").to_numpy(np.float64)
    values[values < 0] = np.nan
    if step_s is None:
        step_s = infer_step(ts, sid)
    out: list[Series] = []
    for s in sorted(set(sid)):
        if ids is not None and s not in ids:
            continue
        sel = sid == s
        out.append(resample(s, ts[sel], values[sel], step_s, str(path)))
        if limit is not None and len(out) >= limit:
            break
    return out
