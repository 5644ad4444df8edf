"""The feedback store: telemetry, forecasts and actuals as Parquet, partitioned by workload.

Layout (hive partitioning, so pyarrow.dataset, DuckDB and Ray Data read it as is)::

    <root>/telemetry/workload=<name>/part-<ns>-<pid>-<seq>.parquet
    <root>/forecasts/workload=<name>/part-<ns>-<pid>-<seq>.parquet
    <root>/choices/workload=<name>/part-<ns>-<pid>-<seq>.parquet   (one per run's end)
    <root>/reservations/workload=<name>/part-<ns>-<pid>-<seq>.parquet
    <root>/_quarantine/...            corrupt files moved aside, never deleted

Crash safety: every flush writes complete, immutable files. A file is written under a
``.tmp`` name, fsynced, then renamed into place (rename is atomic on POSIX), so a reader
never sees half a file and a crash loses at most the rows buffered since the last flush.
Appends never rewrite earlier files.

``start_flush`` writes on a background thread, so the run loop's tick does not wait for
the disk: a flush writes one file per workload and table, 2.5 s for 1000 workloads here
(bench/engine_tick.py), against a 1-s tick. ``flush`` waits for it and writes the rest.

Compaction: at one flush every 5 s that is ~720 files per workload and table an hour, and
a reader (retraining, a notebook) pays per file. So once a workload's folder of
``telemetry``, ``forecasts`` or ``reservations`` holds ``COMPACT_MIN_FILES`` flush files, a flush merges
them into one, named after the first and last it covers (``part-<first>-c-<last>``):
written whole and renamed into place like any file, *then* the sources are deleted. A
crash in between leaves sources next to the merged file: :meth:`read` skips a file a
merged one covers, and the next compaction of that folder deletes it (a reader of the
raw files, e.g. DuckDB, could see those rows twice until then). Once a folder holds
``COMPACT_MIN_FILES`` merged files (~5.7 h of them), they are merged into one the same
way. ``choices`` files (one per run, read newest first) are never merged.
"""

from __future__ import annotations

import bisect
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

# One row per reservation (placement group, or what observe-only would have held), written
# once it is closed: removed, or at the run's end (``prae.engine.broker.AllocatorMirror``).
# The engine keeps only the open ones in memory; the run summary counts these.
RESERVATION_SCHEMA = pa.schema(
    [
        ("written_at", pa.float64()),  # unix seconds the engine wrote it (a run's rows: >= its start)
        ("name", pa.string()),  # the placement group's name
        ("state", pa.string()),  # removed | lost (an allocator died with it) | held at the end
        ("reason", pa.string()),  # the policy's reason, or "adopted"
        ("adopted", pa.bool_()),
        ("cpu", pa.float64()),  # cores
        ("mem", pa.float64()),  # bytes
        ("bundles", pa.int64()),
        ("priority", pa.int64()),
        ("confidence", pa.float64()),
        ("requested_at", pa.float64()),
        ("needed_at", pa.float64()),
        ("created_at", pa.float64()),  # handed to Ray (null: never, e.g. observe-only)
        ("ready_at", pa.float64()),
        ("removed_at", pa.float64()),
        ("pending_s", pa.float64()),  # ready_at - created_at
        ("in_place_before_need", pa.bool_()),
        ("preempted_by", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "telemetry": TELEMETRY_SCHEMA,
    "forecasts": FORECAST_SCHEMA,
    "choices": CHOICE_SCHEMA,
    "reservations": RESERVATION_SCHEMA,
}

COMPACTED_TABLES = ("telemetry", "forecasts", "reservations")
COMPACT_MIN_FILES = 64  # a folder's flush files merged into one (~5 min of 5-s flushes)
COMPACT_PER_FLUSH = 32  # folders merged by one flush at most; the others by the next ones
_MERGED = "-c-"


def _stem(key: tuple[int, int, int]) -> str:
    """A flush file's stem from its (ns, pid, seq): ``_key``'s inverse."""
    ns, pid, seq = key
    return f"part-{ns}-{pid}-{seq:06d}"


def _key(stem: str) -> tuple[int, int, int] | None:
    """(ns, pid, seq) of a flush file's stem ``part-<ns>-<pid>-<seq>``, its write order;
    None for any other name (a file someone else put there: never merged or hidden)."""
    parts = stem.split("-")
    if len(parts) != 4 or parts[0] != "part" or not all(x.isdigit() for x in parts[1:]):
        return None
    return int(parts[1]), int(parts[2]), int(parts[3])


def _span(path: Path) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """The first and last flush file a store file holds the rows of: itself for a flush
    file, the ones it covers for a merged file; None for a file the store did not write."""
    stem = path.name.removesuffix(".parquet")
    if _MERGED not in stem:
        k = _key(stem)
        return None if k is None else (k, k)
    first, last = stem.split(_MERGED, 1)
    a, b = _key(first), _key("part-" + last)
    return None if a is None or b is None else (a, b)


def _covered(paths: Sequence[Path]) -> set[Path]:
    """The files of ``paths`` (one folder) whose rows another file there holds: a merged
    file's span contains theirs (a flush file, or a merged file merged again). Merged
    files are sorted by start (the widest first); each is inside the last one kept or
    starts a new one, and a flush file is looked up in those by bisection."""
    spans = {p: sp for p in paths if (sp := _span(p)) is not None}
    merged = sorted(
        (p for p, (a, b) in spans.items() if a != b),
        key=lambda p: (spans[p][0], tuple(-x for x in spans[p][1]), p.name),
    )
    out: set[Path] = set()
    widest: list[Path] = []  # disjoint, by start
    for p in merged:
        if widest and spans[p][1] <= spans[widest[-1]][1]:
            out.add(p)
        else:
            widest.append(p)
    starts = [spans[w][0] for w in widest]
    for p, (a, b) in spans.items():
        i = bisect.bisect_right(starts, a) - 1
        if a == b and i >= 0 and a <= spans[widest[i]][1]:
            out.add(p)
    return out


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
        # Background flushes started and ended (written or failed), one at a time: a caller
        # that needs the rows buffered at some moment on disk waits for the one it started.
        self.flushes_started = 0
        self.flushes_ended = 0
        self._unmerged: dict[tuple[str, str], int] = {}  # flush files per folder, not merged yet

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
        if self.flushing():
            return False
        self.flushes_started += 1
        self._writer = threading.Thread(
            target=self._write_in_background, args=(self.flushes_started,), name="prae-store-flush", daemon=True
        )
        self._writer.start()
        return True

    def request_flush(self) -> int:
        """The number of the first background flush that writes every row appended so far,
        for ``flush_done``: one started now, or, while another is writing, the next."""
        started = self.start_flush()  # counted in flushes_started
        return self.flushes_started + (0 if started else 1)

    def flush_done(self, number: int) -> bool:
        """Whether background flush ``number`` has ended; starts it once the one writing
        when it was requested has ended."""
        if self.flushes_started < number:
            self.start_flush()
        return self.flushes_ended >= number

    def flushing(self) -> bool:
        """Whether a background flush is still writing."""
        return self._writer is not None and self._writer.is_alive()

    def _write_in_background(self, number: int) -> None:
        try:
            self._write_buffers()
        except Exception as exc:  # the rows are back in the buffers; the next flush retries
            log.warning("background flush of the feedback store failed (%s); its rows are kept for the next", exc)
        finally:
            self.flushes_ended = number

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
            if table in COMPACTED_TABLES:
                key = (table, workload)
                self._unmerged[key] = self._unmerged.get(key, 0) + 1
        self._compact_due()
        return written

    def _compact_due(self) -> None:
        """Merge the folders with the most flush files, ``COMPACT_PER_FLUSH`` at most. A
        failure is logged: the flush files stay, and so do their rows."""
        due = sorted((n, key) for key, n in self._unmerged.items() if n >= COMPACT_MIN_FILES)
        for _, (table, workload) in due[::-1][:COMPACT_PER_FLUSH]:
            try:
                self.compact(table, workload)
            except Exception as exc:
                log.warning("compacting %s of %s failed (%s); its files are kept", table, workload, exc)

    def compact(self, table: str, workload: str, min_files: int = 2) -> int:
        """Merge the folder's flush files into one file, if it has ``min_files`` or more;
        then, once it holds ``COMPACT_MIN_FILES`` merged files, merge those into one too.
        Returns how many files were merged. Deletes files another one covers (left by a
        crash before it could). A corrupt file is quarantined, as by :meth:`read`."""
        if table not in COMPACTED_TABLES:
            raise StoreError(f"table '{table}' is not compacted; these are: {', '.join(COMPACTED_TABLES)}")
        folder = self.root / table / f"workload={workload}"
        paths = sorted(folder.glob("*.parquet"))
        covered = _covered(paths)
        for p in covered:
            p.unlink(missing_ok=True)
        paths = [p for p in paths if p not in covered]
        flush_files = [p for p in paths if _key(p.stem) is not None]
        self._unmerged[(table, workload)] = len(flush_files)
        done = 0
        if len(flush_files) >= max(2, min_files):
            done += self._merge(table, folder, flush_files)
            self._unmerged[(table, workload)] = 0
            paths = sorted(folder.glob("*.parquet"))
        merged = [p for p in paths if _MERGED in p.name and _span(p) is not None]
        if len(merged) >= COMPACT_MIN_FILES:  # ~5 h of merges at 5-s flushes: one file again
            done += self._merge(table, folder, merged)
        return done

    def _merge(self, table: str, folder: Path, files: Sequence[Path]) -> int:
        """One file with the rows of ``files`` (in name order, the write order), named after
        the first and last flush file they cover; then ``files`` are deleted."""
        parts, merged = [], []
        for path in files:
            part = self._read_file(table, path, strict=False)
            if part is not None:
                parts.append(part)
                merged.append(path)
        spans = [sp for p in merged if (sp := _span(p)) is not None]
        if len(merged) < 2 or len(spans) < len(merged):
            return 0
        first, last = spans[0][0], spans[-1][1]
        name = f"{_stem(first)}{_MERGED}{_stem(last).removeprefix('part-')}.parquet"
        self._write_file(pa.concat_tables(parts), folder, name)
        for path in merged:  # only now: until here they are the only copy
            path.unlink(missing_ok=True)
        return len(merged)

    def _write(self, table: str, workload: str, rows: Sequence[Mapping[str, Any]]) -> None:
        schema = TABLES[table]
        columns = {name: [r.get(name) for r in rows] for name in schema.names}
        data = pa.Table.from_pydict(columns, schema=schema)
        folder = self.root / table / f"workload={workload}"
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._seq += 1
            seq = self._seq
        key = (table, workload)
        if table in COMPACTED_TABLES and key not in self._unmerged:  # a store opened on old files
            self._unmerged[key] = sum(1 for p in folder.glob("*.parquet") if _key(p.stem) is not None)
        self._write_file(data, folder, f"{_stem((time.time_ns(), os.getpid(), seq))}.parquet")

    def _write_file(self, data: pa.Table, folder: Path, name: str) -> None:
        """Write ``data`` whole under a temporary name, fsync, rename into place."""
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
        by_folder: dict[Path, list[Path]] = defaultdict(list)
        for p in paths:
            by_folder[p.parent].append(p)
        hidden = set().union(*(_covered(group) for group in by_folder.values()))
        paths = [p for p in paths if p not in hidden]
        if newest is not None:
            paths.reverse()  # newest first, stopping once ``newest`` files were read
        for path in paths:
            if newest is not None and len(parts) == newest:
                break
            part = self._read_file(table, path, strict=strict)
            if part is None:
                continue
            wl = path.parent.name.split("=", 1)[1]
            parts.append(part.append_column("workload", pa.array([wl] * part.num_rows, pa.string())))
        if not parts:
            schema = TABLES[table].append(pa.field("workload", pa.string()))
            return schema.empty_table()
        if newest is not None:
            parts.reverse()  # back to write order
        return pa.concat_tables(parts)

    def _read_file(self, table: str, path: Path, *, strict: bool) -> pa.Table | None:
        """One file's rows; a corrupt file is quarantined and None returned (or, strict,
        ``CorruptStoreFileError`` raised)."""
        schema = TABLES[table]
        try:
            # A file of today's schema directly: read_table's dataset machinery costs 0.84 ms
            # a small file against 0.48 ms, and a merge reads 64 of them (2000 a flush at
            # 1000 workloads). Another schema (an older store) goes through read_table,
            # which fills the columns it lacks.
            with pq.ParquetFile(path) as pf:
                if pf.schema_arrow.equals(schema):
                    return pf.read()
            return pq.read_table(path, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
            moved = self._quarantine(path)
            msg = (
                f"corrupt Parquet file {path} ({exc}); moved to {moved}. "
                "Fix: inspect or delete it there; the other files are intact"
            )
            if strict:
                raise CorruptStoreFileError(msg) from exc
            log.warning(msg)
            return None

    def _quarantine(self, path: Path) -> Path:
        dest = self.root / "_quarantine" / path.relative_to(self.root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        return dest

    def workloads(self, table: str = "telemetry") -> list[str]:
        return sorted(p.name.split("=", 1)[1] for p in (self.root / table).glob("workload=*") if p.is_dir())
