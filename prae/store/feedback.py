"""The feedback store: telemetry, forecasts and actuals as Parquet, partitioned by workload.

Layout (hive partitioning, so pyarrow.dataset, DuckDB and Ray Data read it as is)::

    <root>/telemetry/workload=<name>/part-<ns>-<pid>-<seq>.parquet
    <root>/forecasts/workload=<name>/part-<ns>-<pid>-<seq>.parquet
    <root>/choices/workload=<name>/part-<ns>-<pid>-<seq>.parquet   (one per run's end)
    <root>/_quarantine/...            corrupt files moved aside, never deleted

Crash safety: every flush writes complete, immutable files. A file is written under a
``.tmp`` name, fsynced, then renamed into place (rename is atomic on POSIX), so a reader
never sees half a file and a crash loses at most the rows buffered since the last flush.
Appends never rewrite earlier files.

``start_flush`` writes on a background thread, so the run loop's tick does not wait for
the disk: a flush writes one file per workload and table, 2.5 s for 1000 workloads here
(bench/engine_tick.py), against a 1-s tick. ``flush`` waits for it and writes the rest.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from prae.errors import CorruptStoreFileError, StoreError
from prae.resources import QUANTILE_COLUMNS

log = logging.getLogger(__name__)

TELEMETRY_SCHEMA = pa.schema(
    [
        ("ts", pa.float64()),  # unix seconds of the sample
        ("role", pa.string()),  # "live" or "shadow"
        ("cpu", pa.float64()),  # cores
        ("mem", pa.float64()),  # bytes
        ("disk", pa.float64()),  # bytes/s
        ("net", pa.float64()),  # bytes/s
        ("progress", pa.float64()),  # 0..1, NaN if the workload does not report it
    ]
)

FORECAST_SCHEMA = pa.schema(
    [
        ("issued_at", pa.float64()),
        ("target_ts", pa.float64()),  # issued_at + lead
        ("resource", pa.string()),
        *[(c, pa.float64()) for c in QUANTILE_COLUMNS],  # calibrated quantiles, raw units
        ("actual", pa.float64()),  # usage observed at target_ts (null if never observed)
        ("reserved", pa.float64()),  # what PRAE held for this target (null if nothing)
        ("source", pa.string()),  # "model" or "fallback" (predictor unavailable)
        ("model_version", pa.string()),
        ("shadow_used", pa.bool_()),
    ]
)

# What each workload's point-forecast choice had learnt when a run ended (``ChoiceRecord``):
# its next run starts from the latest one.
CHOICE_SCHEMA = pa.schema(
    [
        ("saved_at", pa.float64()),  # unix seconds; a run's rows share it
        ("resource", pa.string()),
        ("candidate", pa.string()),  # prae.model.combination.CANDIDATES
        ("err", pa.float64()),  # decayed sum of absolute errors, raw units
        ("weight", pa.float64()),  # decayed outcome count (per resource)
        ("count", pa.int64()),  # outcomes seen (per resource)
    ]
)

TABLES: dict[str, pa.Schema] = {
    "telemetry": TELEMETRY_SCHEMA,
    "forecasts": FORECAST_SCHEMA,
    "choices": CHOICE_SCHEMA,
}


class FeedbackStore:
    """Append-only Parquet store. Thread-safe; one writer process per store directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        try:
            for table in TABLES:
                (self.root / table).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the feedback store at {self.root}: {exc}. "
                "Fix: point run.store_dir at a writable directory"
            ) from exc
        self._buffers: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._seq = 0
        self._writer: threading.Thread | None = None  # the background flush, if one was started

    # ------------------------------------------------------------------ writing

    def append(self, table: str, workload: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Buffer rows for ``table``; they reach disk at the next :meth:`flush`."""
        if table not in TABLES:
            raise StoreError(f"unknown table '{table}'; the store has {', '.join(TABLES)}")
        with self._lock:
            self._buffers[(table, workload)].extend(rows)

    def pending_rows(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._buffers.values())

    def flush(self) -> int:
        """Write every buffered row, after a background flush in progress has finished;
        returns how many rows this call wrote. Raises ``StoreError`` if they cannot be
        written (they stay buffered)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.join()
        return self._write_buffers()

    def start_flush(self) -> bool:
        """Write the buffered rows on a background thread and return at once. False, and
        nothing started, while the previous one is still writing: the rows stay buffered
        for the next. A failed background write is logged and its rows are put back, so
        the next flush retries them (and ``flush`` raises if it fails too)."""
        if self._writer is not None and self._writer.is_alive():
            return False
        self._writer = threading.Thread(target=self._write_in_background, name="prae-store-flush", daemon=True)
        self._writer.start()
        return True

    def _write_in_background(self) -> None:
        try:
            self._write_buffers()
        except Exception as exc:  # the rows are back in the buffers; the next flush retries
            log.warning("background flush of the feedback store failed (%s); its rows are kept for the next", exc)

    def _write_buffers(self) -> int:
        with self._lock:
            buffers, self._buffers = self._buffers, defaultdict(list)
        written = 0
        items = list(buffers.items())
        for k, ((table, workload), rows) in enumerate(items):
            if not rows:
                continue
            try:
                self._write(table, workload, rows)
            except Exception:
                # Put back these rows and every buffer not written yet, ahead of rows appended
                # since, so a retry (or the final flush) can still land them, in order.
                with self._lock:
                    for key, left in items[k:]:
                        self._buffers[key][:0] = left
                raise
            written += len(rows)
        return written

    def _write(self, table: str, workload: str, rows: Sequence[Mapping[str, Any]]) -> None:
        schema = TABLES[table]
        columns = {name: [r.get(name) for r in rows] for name in schema.names}
        data = pa.Table.from_pydict(columns, schema=schema)
        folder = self.root / table / f"workload={workload}"
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._seq += 1
            seq = self._seq
        name = f"part-{time.time_ns()}-{os.getpid()}-{seq:06d}.parquet"
        tmp = folder / f".{name}.tmp"
        try:
            with open(tmp, "wb") as fh:
                pq.write_table(data, fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / name)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {folder / name}: {exc}. Fix: free disk space or check permissions") from exc

    # ------------------------------------------------------------------ reading

    def files(self, table: str, workload: str | None = None) -> list[Path]:
        base = self.root / table
        pattern = f"workload={workload}/*.parquet" if workload else "workload=*/*.parquet"
        return sorted(base.glob(pattern))

    def read(
        self,
        table: str,
        workload: str | None = None,
        *,
        strict: bool = False,
        newest: int | None = None,
    ) -> pa.Table:
        """All rows of ``table`` (with a ``workload`` column), optionally of one workload.

        ``newest=k``: only the rows of the k most recently written readable files (file
        names start with the write time in ns, so name order is write order). Why: a
        workload's next run needs only its last run's ``choices`` file, and a store that
        has seen ten thousand runs should not read ten thousand files to start one.

        A corrupt file is moved to ``_quarantine/`` and skipped with a warning, so one bad
        file never hides the rest; with ``strict=True`` it raises :class:`CorruptStoreFileError`
        instead (after quarantining it, so nothing is lost either way).
        """
        if table not in TABLES:
            raise StoreError(f"unknown table '{table}'; the store has {', '.join(TABLES)}")
        if newest is not None and newest < 1:
            raise StoreError(f"newest must be >= 1 file, got {newest}")
        parts = []
        paths = self.files(table, workload)
        if newest is not None:
            paths.reverse()  # newest first, stopping once ``newest`` files were read
        for path in paths:
            if newest is not None and len(parts) == newest:
                break
            try:
                part = pq.read_table(path, schema=TABLES[table])
            except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
                moved = self._quarantine(path)
                msg = (
                    f"corrupt Parquet file {path} ({exc}); moved to {moved}. "
                    "Fix: inspect or delete it there; the other files are intact"
                )
                if strict:
                    raise CorruptStoreFileError(msg) from exc
                log.warning(msg)
                continue
            wl = path.parent.name.split("=", 1)[1]
            parts.append(part.append_column("workload", pa.array([wl] * part.num_rows, pa.string())))
        if not parts:
            schema = TABLES[table].append(pa.field("workload", pa.string()))
            return schema.empty_table()
        if newest is not None:
            parts.reverse()  # back to write order
        return pa.concat_tables(parts)

    def _quarantine(self, path: Path) -> Path:
        dest = self.root / "_quarantine" / path.relative_to(self.root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        return dest

    def workloads(self, table: str = "telemetry") -> list[str]:
        return sorted(p.name.split("=", 1)[1] for p in (self.root / table).glob("workload=*") if p.is_dir())
