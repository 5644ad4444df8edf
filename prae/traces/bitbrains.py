"""GWA-T-12 Bitbrains "Rnd" VM traces: one ``<n>.csv.gz`` (or ``.csv``) per VM.

Native format: a header line, fields separated by ``;`` + TAB. ``Timestamp [ms]`` holds
Unix *seconds*. Converted to PRAE units:

    cpu  = CPU usage [MHZ] / (CPU capacity provisioned [MHZ] / CPU cores)   cores
    mem  = Memory usage [KB] * 1024                                         bytes
    disk = (Disk read + Disk write throughput [KB/s]) * 1024                 bytes/s
    net  = (Network received + transmitted throughput [KB/s]) * 1024         bytes/s
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from prae.errors import TraceFormatError
from prae.traces.series import Series, resample

COLUMNS = {
    "ts": "Timestamp [ms]",
    "cores": "CPU cores",
    "cap": "CPU capacity provisioned [MHZ]",
    "cpu": "CPU usage [MHZ]",
    "cpu_pct": "CPU usage [%]",
    "mem_cap": "Memory capacity provisioned [KB]",
    "mem": "Memory usage [KB]",
    "disk_r": "Disk read throughput [KB/s]",
    "disk_w": "Disk write throughput [KB/s]",
    "net_rx": "Network received throughput [KB/s]",
    "net_tx": "Network transmitted throughput [KB/s]",
}
REQUIRED = ("ts", "cores", "cap", "cpu", "mem", "disk_r", "disk_w", "net_rx", "net_tx")
_FIX = (
    "pass a Bitbrains GWA-T-12 file (header line, ';'+TAB separated, columns "
    + ", ".join(repr(COLUMNS[k]) for k in REQUIRED)
    + "), or choose the right --format"
)


def _read_text(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError as e:
        raise TraceFormatError(f"{path}: file not found. Fix: check the path") from e
    except (OSError, EOFError) as e:
        raise TraceFormatError(f"{path}: cannot read ({e}). Fix: {_FIX}") from e


def load_bitbrains_file(path: str | os.PathLike[str], step_s: float = 300.0) -> Series:
    """One VM -> a Series on a ``step_s`` grid; id ``bitbrains:<file stem>``."""
    path = Path(path)
    raw = _read_text(path).replace(b";\t", b";")
    try:
        df = pd.read_csv(io.BytesIO(raw), sep=";", skipinitialspace=True)
    except Exception as e:
        raise TraceFormatError(f"{path}: not a Bitbrains CSV ({e}). Fix: {_FIX}") from e
    df.columns = [str(c).strip() for c in df.columns]
    missing = [COLUMNS[k] for k in REQUIRED if COLUMNS[k] not in df.columns]
    if missing:
        raise TraceFormatError(f"{path}: missing columns {missing}. Fix: {_FIX}")
    try:
        col = {
            k: pd.to_numeric(df[COLUMNS[k]], errors="coerce").to_numpy(np.float64) for k in REQUIRED
        }
    except Exception as e:  # pragma: no cover - to_numeric with coerce rarely raises
        raise TraceFormatError(f"{path}: non-numeric values ({e}). Fix: {_FIX}") from e
    if np.isnan(col["ts"]).all():
        raise TraceFormatError(f"{path}: no parseable timestamps. Fix: {_FIX}")
    with np.errstate(invalid="ignore", divide="ignore"):
        per_core = col["cap"] / col["cores"]
        cpu = np.where(per_core > 0, col["cpu"] / per_core, np.nan)
    values = np.stack(
        [
            cpu,
            col["mem"] * 1024.0,
            (col["disk_r"] + col["disk_w"]) * 1024.0,
            (col["net_rx"] + col["net_tx"]) * 1024.0,
        ],
        axis=1,
    )
    values[values < 0] = np.nan
    stem = path.name.split(".")[0]
    meta = {
        "cores": float(np.nanmedian(col["cores"]))
        if np.isfinite(col["cores"]).any()
        else float("nan"),
        "mem_capacity_bytes": float(
            np.nanmedian(pd.to_numeric(df.get(COLUMNS["mem_cap"]), errors="coerce")) * 1024
        )
        if COLUMNS["mem_cap"] in df.columns
        else float("nan"),
    }
    return resample(f"bitbrains:{stem}", col["ts"], values, step_s, str(path), meta)


def bitbrains_files(path: str | os.PathLike[str]) -> list[Path]:
    """The VM files under ``path`` (a file, a ``series/`` folder or the trace root),
    sorted by VM number."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise TraceFormatError(f"{path}: no such file or folder. Fix: check the --trace path")
    folder = path / "series" if (path / "series").is_dir() else path
    files = [p for p in folder.iterdir() if p.name.endswith((".csv.gz", ".csv"))]
    if not files:
        raise TraceFormatError(
            f"{path}: no Bitbrains '<n>.csv.gz' files found. Fix: point --trace at the "
            "bitbrains-rnd-2013-07 folder, its series/ folder or one file"
        )

    def key(p: Path) -> tuple[int, str]:
        stem = p.name.split(".")[0]
        return (int(stem), stem) if stem.isdigit() else (1 << 30, stem)

    return sorted(files, key=key)


def load_bitbrains(
    path: str | os.PathLike[str],
    step_s: float = 300.0,
    ids: list[str] | None = None,
    limit: int | None = None,
) -> list[Series]:
    """Load VMs; ``ids`` selects file stems (e.g. ["5", "10"]), ``limit`` keeps the first n."""
    files = bitbrains_files(path)
    if ids is not None:
        wanted = set(ids)
        files = [f for f in files if f.name.split(".")[0] in wanted]
    if limit is not None:
        files = files[:limit]
    return [load_bitbrains_file(f, step_s) for f in files]
