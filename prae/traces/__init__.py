"""Trace loaders: real traces in their native formats -> ``Series`` on a regular grid.

    bitbrains.py  GWA-T-12 Bitbrains Rnd VMs (``<n>.csv.gz``, ';'+TAB separated)
    alibaba.py    Alibaba 2018 machine_usage (+ machine_meta for core counts)
    google.py     Google 2019 instance_usage CSVs
    generic.py    long format CSV/Parquet: series_id, timestamp, cpu/mem/disk/net
    series.py     the Series type and the resampling onto a grid (missing = NaN)

Every loader raises ``TraceFormatError`` naming the file, the problem and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from prae.errors import TraceFormatError
from prae.traces.alibaba import load_alibaba
from prae.traces.bitbrains import load_bitbrains
from prae.traces.generic import load_generic
from prae.traces.google import load_google
from prae.traces.series import Series, resample

FORMATS: tuple[str, ...] = ("auto", "bitbrains", "alibaba", "google", "generic")
NATIVE_STEP_S = 300.0  # the step the trace formats are put on unless told otherwise


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess the format from the path; TraceFormatError if it cannot tell."""
    p = Path(path)
    if not p.exists():
        raise TraceFormatError(f"{p}: no such file or folder. Fix: check the --trace path")
    name = p.name.lower()
    if p.is_file():
        if name.endswith((".parquet", ".pq")):
            return "generic"
        if name == "machine_usage.csv":
            return "alibaba"
        if "bitbrains" in str(p).lower():
            return "bitbrains"
        if name.endswith(".csv"):
            with open(p, encoding="utf-8", errors="replace") as f:
                head = f.readline().lower()
            if "series_id" in head:
                return "generic"
            if "avg_cpu_usage" in head:
                return "google"
            if head.startswith("m_"):
                return "alibaba"
    else:
        if (p / "machine_usage.csv").is_file():
            return "alibaba"
        if (p / "series").is_dir() or "bitbrains" in name:
            return "bitbrains"
        if "google" in name:
            return "google"
    raise TraceFormatError(
        f"{p}: cannot tell the trace format. Fix: pass --format "
        "(bitbrains, alibaba, google or generic)"
    )


def load_trace(
    path: str | os.PathLike[str],
    fmt: str = "auto",
    step_s: float | None = None,
    ids: list[str] | None = None,
    limit: int | None = None,
) -> list[Series]:
    """Load a trace as Series. ``step_s``: grid step (default 300 s for the native
    formats, inferred for generic); ``ids``: keep these series; ``limit``: the first n."""
    if fmt not in FORMATS:
        raise TraceFormatError(
            f"{path}: unknown format {fmt!r}. Fix: use one of {', '.join(FORMATS)}"
        )
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "generic":
        out = load_generic(path, step_s, ids, limit)
    else:
        loader = {"bitbrains": load_bitbrains, "alibaba": load_alibaba, "google": load_google}[fmt]
        out = loader(path, step_s or NATIVE_STEP_S, ids, limit)
    if not out:
        raise TraceFormatError(f"{path}: no series selected. Fix: check --series / --max-series")
    return out


__all__ = [
    "FORMATS",
    "Series",
    "TraceFormatError",
    "detect_format",
    "load_alibaba",
    "load_bitbrains",
    "load_generic",
    "load_google",
    "load_trace",
    "resample",
]
