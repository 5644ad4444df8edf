"""Google ClusterData 2019 ``instance_usage`` rows, one CSV(.gz) per task instance.

``time`` is microseconds since the trace start, one row per 300-s window. Converted:

    cpu  = avg_cpu_usage       (Google normalised CPU units)
    mem  = avg_memory_usage    (normalised memory units)
    disk, net: not in the trace -> missing throughout

Tasks move between machines, so windows can be absent: they stay NaN on the grid.
Borg's allocation (``cpu_limit``, ``memory_limit``) is kept on the grid in
``Series.meta["limits"]`` (shape (N, 2): cpu, mem) for comparison with a policy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from prae.errors import TraceFormatError
from prae.traces.series import Series, resample

REQUIRED = ("time", "avg_cpu_usage", "avg_memory_usage")
_FIX = (
    "pass a Google 2019 instance_usage CSV (header with columns "
    + ", ".join(REQUIRED)
    + ") or a folder of them, or choose the right --format"
)


def load_google_file(path: str | os.PathLike[str], step_s: float = 300.0) -> Series:
    path = Path(path)
    if not path.is_file():
        raise TraceFormatError(f"{path}: file not found. Fix: check the --trace path")
    try:
        df = pd.read_csv(path)
    except Exception as e:
        raise TraceFormatError(f"{path}: not a readable CSV ({e}). Fix: {_FIX}") from e
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise TraceFormatError(f"{path}: missing columns {missing}. Fix: {_FIX}")
    ts = pd.to_numeric(df["time"], errors="coerce").to_numpy(np.float64) / 1e6
    cpu = pd.to_numeric(df["avg_cpu_usage"], errors="coerce").to_numpy(np.float64)
    mem = pd.to_numeric(df["avg_memory_usage"], errors="coerce").to_numpy(np.float64)
    nan = np.full_like(cpu, np.nan)
    values = np.stack([cpu, mem, nan, nan], axis=1)
    values[values < 0] = np.nan
    name = f"google:{path.parent.name}/{path.name.split('-')[0]}"
    meta: dict[str, object] = {}
    if {"cpu_limit", "memory_limit"} <= set(df.columns):
        lim = np.stack(
            [
                pd.to_numeric(df["cpu_limit"], errors="coerce"),
                pd.to_numeric(df["memory_limit"], errors="coerce"),
            ],
            axis=1,
        ).astype(np.float64)
        lim4 = np.concatenate([lim, np.full((len(df), 2), np.nan)], axis=1)
        meta["limits"] = resample(name, ts, lim4, step_s).values[:, :2]
    return resample(name, ts, values, step_s, str(path), meta)


def load_google(
    path: str | os.PathLike[str],
    step_s: float = 300.0,
    ids: list[str] | None = None,
    limit: int | None = None,
) -> list[Series]:
    """All instance files under ``path`` (recursive), sorted by path."""
    path = Path(path)
    if path.is_file():
        return [load_google_file(path, step_s)]
    if not path.is_dir():
        raise TraceFormatError(f"{path}: no such file or folder. Fix: check the --trace path")
    files = sorted(p for p in path.rglob("*") if p.name.endswith((".csv.gz", ".csv")))
    if not files:
        raise TraceFormatError(f"{path}: no instance_usage CSV files found. Fix: {_FIX}")
    out = [load_google_file(f, step_s) for f in files]
    if ids is not None:
        out = [s for s in out if s.series_id in ids or s.series_id.split(":", 1)[1] in ids]
    return out[:limit] if limit is not None else out
