"""The feedback store: partitioned, crash-safe, readable by pyarrow and DuckDB, never loses data."""

from __future__ import annotations

import pyarrow.dataset as ds
import pytest

from prae.errors import CorruptStoreFileError, StoreError
from prae.store.feedback import FeedbackStore


def tel(ts, cpu=1.0):
    return {"ts": ts, "role": "live", "cpu": cpu, "mem": 1e6, "disk": 0.0, "net": 0.0, "progress": 0.1}


def test_append_flush_read_partitioned(tmp_path):
    store = FeedbackStore(tmp_path)
    store.append("telemetry", "a", [tel(1), tel(2)])
    store.append("telemetry", "b", [tel(3)])
    assert store.read("telemetry").num_rows == 0  # buffered, not yet on disk
    assert store.flush() == 3
    t = store.read("telemetry")
    assert t.num_rows == 3 and sorted(set(t.column("workload").to_pylist())) == ["a", "b"]
    assert store.read("telemetry", "a").num_rows == 2
    assert store.workloads() == ["a", "b"]
    # plain pyarrow with hive partitioning sees the same rows and the partition column
    dset = ds.dataset(tmp_path / "telemetry", format="parquet", partitioning="hive")
    assert dset.to_table().num_rows == 3
    assert not list(tmp_path.rglob("*.tmp"))


def test_duckdb_reads_store(tmp_path):
    import duckdb  # the test extra: a missing one is a broken install, not a skip

    store = FeedbackStore(tmp_path)
    store.append("telemetry", "a", [tel(i, cpu=i) for i in range(10)])
    store.flush()
    total = duckdb.sql(
        f"select workload, sum(cpu) from read_parquet('{tmp_path}/telemetry/*/*.parquet', hive_partitioning=true) group by 1"
    ).fetchall()
    assert total == [("a", 45.0)]


def test_corrupt_file_is_quarantined_not_lost(tmp_path, caplog):
    store = FeedbackStore(tmp_path)
    store.append("telemetry", "a", [tel(1)])
    store.flush()
    bad = tmp_path / "telemetry" / "workload=a" / "part-0-0-000000.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    assert store.read("telemetry").num_rows == 1
    assert "corrupt Parquet file" in caplog.text
    quarantined = tmp_path / "_quarantine" / "telemetry" / "workload=a" / bad.name
    assert quarantined.read_bytes().startswith(b"PAR1 this")
    quarantined.rename(bad)
    with pytest.raises(CorruptStoreFileError, match="Fix:"):
        store.read("telemetry", strict=True)
    assert quarantined.exists()


def test_failed_flush_keeps_rows_for_retry(tmp_path, monkeypatch):
    store = FeedbackStore(tmp_path)
    store.append("telemetry", "a", [tel(1)])

    def boom(*a, **k):
        raise StoreError("disk full")

    monkeypatch.setattr(store, "_write", boom)
    with pytest.raises(StoreError):
        store.flush()
    assert store.pending_rows() == 1
    monkeypatch.undo()
    assert store.flush() == 1 and store.read("telemetry").num_rows == 1


def test_a_failed_flush_keeps_the_rows_of_every_workload_it_had_not_reached(tmp_path, monkeypatch):
    """The first file of a flush fails: the rows of the workloads after it were taken out of
    the buffers too, and must be put back with it, ahead of rows appended since."""
    store = FeedbackStore(tmp_path)
    for w in ("a", "b", "c"):
        store.append("telemetry", w, [tel(1), tel(2)])
    real = store._write
    calls = []

    def fail_first(table, workload, rows):
        calls.append(workload)
        if len(calls) == 1:
            raise StoreError("disk full")
        real(table, workload, rows)

    monkeypatch.setattr(store, "_write", fail_first)
    with pytest.raises(StoreError):
        store.flush()
    assert store.pending_rows() == 6
    store.append("telemetry", "a", [tel(3)])
    assert store.flush() == 7
    a = store.read("telemetry", "a")
    assert a.column("ts").to_pylist() == [1, 2, 3]
    assert store.read("telemetry").num_rows == 7


def test_a_background_flush_writes_while_the_caller_goes_on(tmp_path, monkeypatch, caplog):
    """``start_flush`` returns before the rows are on disk; rows appended meanwhile go to the
    next flush; ``flush`` waits for the background one. A failed background write loses
    nothing: its rows are retried by the next flush."""
    import threading

    store = FeedbackStore(tmp_path)
    store.append("telemetry", "a", [tel(1)])
    release = threading.Event()
    real = store._write

    def slow(table, workload, rows):
        assert release.wait(10)
        real(table, workload, rows)

    monkeypatch.setattr(store, "_write", slow)
    assert store.start_flush()
    assert not store.start_flush()  # one at a time: the rows stay buffered for the next
    store.append("telemetry", "a", [tel(2)])
    assert store.read("telemetry").num_rows == 0  # still writing
    release.set()
    assert store.flush() == 1  # waited for the first row's write, then wrote the second
    assert store.read("telemetry", "a").column("ts").to_pylist() == [1, 2]

    def boom(*a, **k):
        raise StoreError("disk full")

    monkeypatch.setattr(store, "_write", boom)
    store.append("telemetry", "b", [tel(3)])
    assert store.start_flush()
    store._writer.join(10)
    assert "background flush of the feedback store failed (disk full)" in caplog.text
    assert store.pending_rows() == 1
    monkeypatch.setattr(store, "_write", real)
    assert store.flush() == 1 and store.read("telemetry", "b").num_rows == 1


def test_unknown_table_and_unwritable_root(tmp_path):
    store = FeedbackStore(tmp_path)
    with pytest.raises(StoreError, match="unknown table"):
        store.append("nope", "a", [])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="Fix:"):
        FeedbackStore(blocker / "store")


def test_newest_reads_only_the_latest_readable_files(tmp_path, caplog):
    """A workload's next run reads only its last run's choices file, however many runs the
    store has seen; a corrupt newest file is quarantined and the one before it is used."""
    store = FeedbackStore(tmp_path)
    for run in range(5):
        store.append("telemetry", "a", [tel(run, cpu=run), tel(run + 0.5, cpu=run)])
        store.flush()
    store.append("telemetry", "b", [tel(9, cpu=9.0)])
    store.flush()
    assert store.read("telemetry", "a", newest=1).column("cpu").to_pylist() == [4.0, 4.0]
    assert store.read("telemetry", "a", newest=2).column("cpu").to_pylist() == [3.0, 3.0, 4.0, 4.0]
    assert store.read("telemetry", "a", newest=50).num_rows == 10
    newest = store.files("telemetry", "a")[-1]
    newest.write_bytes(b"PAR1 torn")
    assert store.read("telemetry", "a", newest=1).column("cpu").to_pylist() == [3.0, 3.0]
    assert "corrupt Parquet file" in caplog.text
    assert (tmp_path / "_quarantine" / "telemetry" / "workload=a" / newest.name).exists()
    with pytest.raises(StoreError, match="newest must be >= 1"):
        store.read("telemetry", "a", newest=0)


def flushes(store, workload, n, start=0):
    for i in range(start, start + n):
        store.append("telemetry", workload, [tel(2 * i), tel(2 * i + 1)])
        store.flush()


def test_flush_files_are_merged_once_a_folder_has_enough(tmp_path, monkeypatch):
    """A flush every 5 s is ~720 files per workload and table an hour: from
    COMPACT_MIN_FILES on, a flush merges them into one; readers see every row once, in order."""
    import prae.store.feedback as fb

    monkeypatch.setattr(fb, "COMPACT_MIN_FILES", 5)
    store = FeedbackStore(tmp_path)
    flushes(store, "a", 12)
    store.append("telemetry", "b", [tel(0)])
    store.flush()
    files = store.files("telemetry", "a")
    assert len(files) == 12 - 2 * 5 + 2  # two merged files and the two flushed since
    assert sum("-c-" in p.name for p in files) == 2
    assert store.read("telemetry", "a").column("ts").to_pylist() == list(range(24))
    assert ds.dataset(tmp_path / "telemetry", format="parquet", partitioning="hive").count_rows() == 25
    # a store opened later counts the files already there
    again = FeedbackStore(tmp_path)
    flushes(again, "a", 3, start=12)
    assert len(again.files("telemetry", "a")) == 3
    assert again.read("telemetry", "a").column("ts").to_pylist() == list(range(30))


def test_a_crash_between_merging_and_deleting_loses_nothing_and_duplicates_nothing(tmp_path, monkeypatch, caplog):
    from pathlib import Path

    store = FeedbackStore(tmp_path)
    flushes(store, "a", 6)
    real_unlink = Path.unlink

    def crash(self, missing_ok=False):
        raise OSError("killed")

    monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(OSError):
        store.compact("telemetry", "a")  # the merged file is in place, the sources too
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert len(store.files("telemetry", "a")) == 7
    assert store.read("telemetry", "a").column("ts").to_pylist() == list(range(12))  # once each
    flushes(store, "a", 1, start=6)
    assert store.compact("telemetry", "a") == 0  # only one new flush file: nothing to merge...
    # ...but the leftovers the merged file covers are gone
    assert [p.name.count("-c-") for p in store.files("telemetry", "a")] == [1, 0]
    assert store.read("telemetry", "a").column("ts").to_pylist() == list(range(14))


def test_compaction_quarantines_a_corrupt_file_and_spares_choices_and_foreign_files(tmp_path, caplog):
    store = FeedbackStore(tmp_path)
    flushes(store, "a", 4)
    bad = store.files("telemetry", "a")[1]
    bad.write_bytes(b"not parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prae.store.feedback import TELEMETRY_SCHEMA

    foreign = bad.parent / "import-2024.parquet"  # not a name the store writes: left alone
    pq.write_table(pa.Table.from_pylist([tel(-1)], schema=TELEMETRY_SCHEMA), foreign)
    assert store.compact("telemetry", "a") == 3
    assert (tmp_path / "_quarantine" / bad.relative_to(tmp_path)).read_bytes() == b"not parquet"
    assert store.read("telemetry", "a").column("ts").to_pylist() == [-1, 0, 1, 4, 5, 6, 7]
    assert foreign.exists()
    with pytest.raises(StoreError, match="not compacted"):
        store.compact("choices", "a")


def test_merged_files_are_merged_again_and_a_crash_there_duplicates_nothing(tmp_path, monkeypatch):
    """A merge every 64 flushes is ~290 files per workload and table a day: from
    COMPACT_MIN_FILES merged files on they become one, again make-before-break."""
    from pathlib import Path

    import prae.store.feedback as fb

    monkeypatch.setattr(fb, "COMPACT_MIN_FILES", 3)
    store = FeedbackStore(tmp_path)
    flushes(store, "a", 8)  # two merges of 3, two flush files
    assert [p.name.count("-c-") for p in store.files("telemetry", "a")] == [1, 1, 0, 0]
    real_unlink = Path.unlink

    def crash_on_merged(self, missing_ok=False):
        if "-c-" in self.name:
            raise OSError("killed")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", crash_on_merged)
    flushes(store, "a", 1, start=8)  # the third merge, then the three merged ones merged: the crash
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert [p.name.count("-c-") for p in store.files("telemetry", "a")] == [1, 1, 1, 1]
    assert store.read("telemetry", "a").column("ts").to_pylist() == list(range(18))  # once each
    assert store.compact("telemetry", "a") == 0  # deletes what the crash left; nothing to merge
    (only,) = store.files("telemetry", "a")
    assert only.name.count("-c-") == 1
    assert store.read("telemetry", "a").column("ts").to_pylist() == list(range(18))
    assert ds.dataset(tmp_path / "telemetry", format="parquet", partitioning="hive").count_rows() == 18
    flushes(store, "a", 3, start=9)  # and on: a merge next to the merged-again file
    assert store.read("telemetry", "a").column("ts").to_pylist() == list(range(24))
    assert len(store.files("telemetry", "a")) == 2


def test_a_file_of_an_older_schema_is_read_with_the_missing_columns_empty(tmp_path):
    """Today's files are read directly; one written before a column existed goes through
    the dataset reader, which fills the column with nulls (and a merge keeps it so)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prae.store.feedback import TELEMETRY_SCHEMA

    store = FeedbackStore(tmp_path)
    flushes(store, "a", 1)
    old_schema = pa.schema([f for f in TELEMETRY_SCHEMA if f.name != "progress"])
    row = {k: v for k, v in tel(-1).items() if k != "progress"}
    folder = tmp_path / "telemetry" / "workload=a"
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), folder / "part-1-1-000001.parquet")
    t = store.read("telemetry", "a")
    assert t.column("ts").to_pylist() == [-1, 0, 1] and t.column("progress").to_pylist() == [None, 0.1, 0.1]
    assert store.compact("telemetry", "a") == 2
    assert store.read("telemetry", "a").column("progress").to_pylist() == [None, 0.1, 0.1]
