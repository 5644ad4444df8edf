"""Real traces as workload curves: ``"bitbrains:<vm>"``, ``"alibaba:<machine>"``,
``"google:<file stem>"`` or a file path, read with :mod:`prae.traces` from the shared traces
folder (``$PRAE_TRACES_DIR``, else ``../shared/traces`` beside the project).

A window of ``steps`` rows starting at ``start`` is taken, missing values are carried forward
(then 0), and each resource is scaled so the window's peak equals the given maximum: the shape
is the trace's, the amplitude fits this machine. A resource the trace does not record (Google:
disk and net) stays 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from prae.errors import ConfigError, TraceFormatError

_PROJECT = Path(__file__).resolve().parents[2]


def traces_dir() -> Path:
    return Path(os.environ.get("PRAE_TRACES_DIR") or (_PROJECT.parent / "shared" / "traces"))


def load_window(trace: str, start: int, steps: int) -> np.ndarray:
    """Rows ``start .. start+steps`` of a trace, shape (steps, 4) in RESOURCES order, raw units."""
    root = traces_dir()
    try:
        source, read = _source(trace, root)
        values = _cached_values(trace, source, read)
    except TraceFormatError as exc:
        raise ConfigError(
            f"trace '{trace}'",
            "params.trace",
            str(exc),
            f"check the name; traces are read from {root}",
        ) from exc
    if len(values) < start + steps:
        raise ConfigError(
            f"trace '{trace}'",
            "params.start",
            f"the trace has {len(values)} rows, the window {start}..{start + steps} does not fit",
            f"choose start + steps <= {len(values)}",
        )
    return _ffill(values[start : start + steps])


def _source(trace: str, root: Path) -> tuple[Path, Callable[[], np.ndarray]]:
    """The file (or folder) a trace name is read from, and how to read its first series."""
    kind, _, ident = trace.partition(":")
    if kind == "bitbrains" and ident:
        path = root / "bitbrains-rnd-2013-07" / "series" / f"{ident}.csv.gz"
        return path, lambda: _load_trace(path, "bitbrains")[0].values
    if kind == "alibaba" and ident:
        folder = root / "alibaba2018-machine-usage-sample"
        return folder, lambda: _load_trace(folder, "alibaba", ids=[ident])[0].values
    if kind == "google" and ident:
        matches = sorted((root / "google2019-instance-usage").rglob(f"{ident}*.csv*"))
        if not matches:
            raise TraceFormatError(f"no Google instance file starting with {ident!r} under {root}")
        return matches[0], lambda: _load_trace(matches[0], "google")[0].values
    if os.path.exists(trace):
        return Path(trace), lambda: _load_trace(trace)[0].values
    raise TraceFormatError(
        f"{trace!r} is not 'bitbrains:<vm>', 'alibaba:<machine>', 'google:<stem>' or a file"
    )


def _load_trace(*args: Any, **kwargs: Any) -> list[Any]:
    """:func:`prae.traces.load_trace`, imported only when a trace is read: it brings pandas
    (~0.5 CPU-s), which a replay or service shadow whose trace is cached would pay for nothing."""
    from prae.traces import load_trace

    return load_trace(*args, **kwargs)


def _cached_values(trace: str, source: Path, read: Callable[[], np.ndarray]) -> np.ndarray:
    """The trace's values, parsed once per machine: parsing a Bitbrains file takes ~0.4
    CPU-s, a third of a replay shadow's start-up. Kept as .npy in ``$PRAE_CACHE_DIR``
    (else ``~/.cache/prae``), keyed by the name and the source's path, size and mtime, so
    an edited trace is read again. A cache that cannot be written (a sandboxed shadow, a
    read-only home) is skipped."""
    try:
        st = source.stat()
    except OSError:
        return np.asarray(read())  # let the reader say what is missing
    key = hashlib.sha256(f"{trace}|{source.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    cache = Path(os.environ.get("PRAE_CACHE_DIR") or Path.home() / ".cache" / "prae") / "traces" / f"{key}.npy"
    with contextlib.suppress(OSError, ValueError):
        return np.load(cache, allow_pickle=False)
    values = np.asarray(read(), dtype=np.float64)
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, values)
        os.replace(tmp, cache)  # atomic: a live run and its shadow may both write it
    return values


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
