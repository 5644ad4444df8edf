"""Real traces as workload curves: ``"bitbrains:<vm>"``, ``"alibaba:<machine>"``,
``"google:<file stem>"`` or a file path, read with :mod:`prae.traces` from the shared traces
folder (``$PRAE_TRACES_DIR``, else ``../shared/traces`` beside the project).

A window of ``steps`` rows starting at ``start`` is taken, missing values are carried forward
(then 0), and each resource is scaled so the window's peak equals the given maximum: the shape
is the trace's, the amplitude fits this machine. A resource the trace does not record (Google:
disk and net) stays 0.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from prae.errors import ConfigError, TraceFormatError

_PROJECT = Path(__file__).resolve().parents[2]


def traces_dir() -> Path:
    return Path(os.environ.get("PRAE_TRACES_DIR") or (_PROJECT.parent / "shared" / "traces"))


def load_window(trace: str, start: int, steps: int) -> np.ndarray:
    """Rows ``start .. start+steps`` of a trace, shape (steps, 4) in RESOURCES order, raw units."""
    from prae.traces import load_trace

    kind, _, ident = trace.partition(":")
    root = traces_dir()
    try:
        if kind == "bitbrains" and ident:
            series = load_trace(
                root / "bitbrains-rnd-2013-07" / "series" / f"{ident}.csv.gz", "bitbrains"
            )
        elif kind == "alibaba" and ident:
            series = load_trace(root / "alibaba2018-machine-usage-sample", "alibaba", ids=[ident])
        elif kind == "google" and ident:
            matches = sorted((root / "google2019-instance-usage").rglob(f"{ident}*.csv*"))
            if not matches:
                raise TraceFormatError(
                    f"no Google instance file starting with {ident!r} under {root}"
                )
            series = load_trace(matches[0], "google")
        elif os.path.exists(trace):
            series = load_trace(trace)
        else:
            raise TraceFormatError(
                f"{trace!r} is not 'bitbrains:<vm>', 'alibaba:<machine>', 'google:<stem>' or a file"
            )
    except TraceFormatError as exc:
        raise ConfigError(
            f"trace '{trace}'",
            "params.trace",
            str(exc),
            f"check the name; traces are read from {root}",
        ) from exc
    values = series[0].values
    if len(values) < start + steps:
        raise ConfigError(
            f"trace '{trace}'",
            "params.start",
            f"the trace has {len(values)} rows, the window {start}..{start + steps} does not fit",
            f"choose start + steps <= {len(values)}",
        )
    return _ffill(values[start : start + steps])


def _ffill(a: np.ndarray) -> np.ndarray:
    out = np.array(a, dtype=np.float64)
    for r in range(out.shape[1]):
        col = out[:, r]
        ok = ~np.isnan(col)
        if not ok.any():
            col[:] = 0.0
            continue
        idx = np.where(ok, np.arange(len(col)), 0)
        np.maximum.accumulate(idx, out=idx)
        col[:] = np.where(ok[idx], col[idx], 0.0)
    return out


def scale_to_peaks(window: np.ndarray, peaks: tuple[float, float, float, float]) -> np.ndarray:
    """Each column scaled so its max equals ``peaks[r]`` (a flat-zero column stays 0)."""
    out = np.zeros_like(window, dtype=np.float64)
    for r, peak in enumerate(peaks):
        top = float(np.max(window[:, r])) if len(window) else 0.0
        if top > 0:
            out[:, r] = np.clip(window[:, r], 0.0, None) / top * peak
    return out
