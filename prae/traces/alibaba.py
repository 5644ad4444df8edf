"""Alibaba cluster-trace-v2018 ``machine_usage`` (no header) and ``machine_meta``.

machine_usage columns: machine_id, time_stamp [s], cpu_util_percent, mem_util_percent,
mem_gps, mkpi, net_in, net_out, disk_io_percent. Converted to PRAE units:

    cpu  = cpu_util_percent / 100 * cpu_num (from machine_meta; 1 if absent)   cores
    mem  = mem_util_percent / 100 * mem_size (machine_meta, normalised units)
    disk = disk_io_percent; the trace's error markers (< 0 or > 100) are missing
    net  = net_in + net_out (normalised units)

Sampling is irregular (median 60 s); samples are averaged onto a ``step_s`` grid.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from prae.errors import TraceFormatError
from prae.traces.series import Series, resample

USAGE_COLUMNS = (
    "machine_id",
    "time_stamp",
    "cpu_util_percent",
    "mem_util_percent",
    "mem_gps",
    "mkpi",
    "net_in",
    "net_out",
    "disk_io_percent",
)
META_COLUMNS = (
    "machine_id",
    "time_stamp",
    "failure_domain_1",
    "failure_domain_2",
    "cpu_num",
    "mem_size",
    "status",
)
_FIX = (
    "pass Alibaba 2018 machine_usage.csv (no header, 9 comma-separated columns: "
    + ", ".join(USAGE_COLUMNS)
    + ") or the folder holding it, or choose the right --format"
)


def _read(path: Path, names: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise TraceFormatError(f"{path}: file not found. Fix: check the --trace path")
    try:
        df = pd.read_csv(path, header=None, names=list(names), index_col=False)
    except Exception as e:
        raise TraceFormatError(f"{path}: not an Alibaba 2018 CSV ({e}). Fix: {_FIX}") from e
    if df.empty:
        raise TraceFormatError(f"{path}: no rows. Fix: {_FIX}")
    first = str(df.iloc[0, 0])
    if not first.startswith("m_") or df.shape[1] != len(names):
        raise TraceFormatError(
            f"{path}: first field {first!r} is not a machine id like 'm_1932'. Fix: {_FIX}"
        )
    return df


def load_alibaba(
    path: str | os.PathLike[str],
    step_s: float = 300.0,
    ids: list[str] | None = None,
    limit: int | None = None,
) -> list[Series]:
    """One Series per machine (``alibaba:<machine_id>``). ``path``: the usage CSV or its folder."""
    path = Path(path)
    usage_path = path / "machine_usage.csv" if path.is_dir() else path
    df = _read(usage_path, USAGE_COLUMNS)
    meta_path = usage_path.parent / "machine_meta.csv"
    cpu_num: dict[str, float] = {}
    mem_size: dict[str, float] = {}
    if meta_path.is_file():
        meta = _read(meta_path, META_COLUMNS)
        last = meta.sort_values(["machine_id", "time_stamp"]).groupby("machine_id").last()
        cpu_num = pd.to_numeric(last["cpu_num"], errors="coerce").to_dict()
        mem_size = pd.to_numeric(last["mem_size"], errors="coerce").to_dict()
    num = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) for c in USAGE_COLUMNS[1:]}
    machine = df["machine_id"].astype(str).to_numpy()
    disk = num["disk_io_percent"]
    disk = np.where((disk < 0) | (disk > 100), np.nan, disk)
    out: list[Series] = []
    for m in sorted(set(machine), key=lambda s: (len(s), s)):
        if ids is not None and m not in ids:
            continue
        sel = machine == m
        cores = float(cpu_num.get(m, 1.0))
        msize = float(mem_size.get(m, 100.0))
        values = np.stack(
            [
                num["cpu_util_percent"][sel] / 100.0 * cores,
                num["mem_util_percent"][sel] / 100.0 * msize,
                disk[sel],
                num["net_in"][sel] + num["net_out"][sel],
            ],
            axis=1,
        )
        values[values < 0] = np.nan
        out.append(
            resample(
                f"alibaba:{m}",
                num["time_stamp"][sel],
                values,
                step_s,
                str(usage_path),
                {"cores": cores, "mem_size": msize},
            )
        )
        if limit is not None and len(out) >= limit:
            break
    return out
