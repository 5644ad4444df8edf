"""Trace loaders: native formats, the generic long format, resampling, bad input."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prae.errors import TraceFormatError
from prae.traces import detect_format, load_trace, resample
from prae.traces.generic import infer_step

SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"

BB_HEADER = (
    "Timestamp [ms];\tCPU cores;\tCPU capacity provisioned [MHZ];\tCPU usage [MHZ];\tCPU usage [%];\t"
    "Memory capacity provisioned [KB];\tMemory usage [KB];\tDisk read throughput [KB/s];\t"
    "Disk write throughput [KB/s];\tNetwork received throughput [KB/s];\tNetwork transmitted throughput [KB/s]"
)


def write_bitbrains(
    path: Path, ts: list[int], cpu_mhz: list[float], header: str = BB_HEADER
) -> Path:
    lines = [header]
    for t, c in zip(ts, cpu_mhz, strict=True):
        lines.append(
            ";\t".join(str(v) for v in (t, 2, 5000.0, c, c / 50, 8e6, 1000.0, 1.0, 2.0, 3.0, 4.0))
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_bitbrains_units_and_irregular_sampling(tmp_path: Path) -> None:
    # 300-s grid with one extra sample (t=450) and one gap (t=1200 missing)
    f = write_bitbrains(
        tmp_path / "bb" / "series" / "7.csv.gz", [0, 300, 450, 600, 900, 1500], [2500.0] * 6
    )
    (s,) = load_trace(tmp_path / "bb", "bitbrains")
    assert s.series_id == "bitbrains:7" and s.step_s == 300 and s.source == str(f)
    assert len(s) == 6  # 0..1500 on a 300-s grid
    np.testing.assert_allclose(
        s.values[0], [1.0, 1000.0 * 1024, 3.0 * 1024, 7.0 * 1024]
    )  # 2500 MHz / 2500 MHz per core
    assert np.isnan(s.values[4]).all()  # t = 1200 had no sample: explicit missing
    assert np.isfinite(s.values[[0, 1, 2, 3, 5]]).all()


def test_bitbrains_bad_files_name_the_file_and_fix(tmp_path: Path) -> None:
    bad = write_bitbrains(
        tmp_path / "1.csv.gz",
        [0, 300],
        [1.0, 2.0],
        header=BB_HEADER.replace("CPU usage [MHZ]", "CPU use"),
    )
    with pytest.raises(
        TraceFormatError, match=r"1\.csv\.gz.*missing columns.*CPU usage \[MHZ\].*Fix"
    ):
        load_trace(bad, "bitbrains")
    corrupt = tmp_path / "2.csv.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(TraceFormatError, match=r"2\.csv\.gz.*Fix"):
        load_trace(corrupt, "bitbrains")
    with pytest.raises(TraceFormatError, match="not found|no such"):
        load_trace(tmp_path / "missing.csv.gz", "bitbrains")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceFormatError, match="no Bitbrains"):
        load_trace(tmp_path / "empty", "bitbrains")


def test_alibaba_error_markers_and_cores(tmp_path: Path) -> None:
    d = tmp_path / "ali"
    d.mkdir()
    rows = [
        f"m_1,{t},{50},{40},,,{1.0},{2.0},{disk}"
        for t, disk in [(0, 5), (60, -1), (300, 101), (600, 7)]
    ]
    (d / "machine_usage.csv").write_text("\n".join(rows) + "\n")
    (d / "machine_meta.csv").write_text("m_1,0,1,2,96,100,USING\n")
    (s,) = load_trace(d)
    assert s.series_id == "alibaba:m_1"
    np.testing.assert_allclose(s.values[0, :2], [48.0, 40.0])  # 50 % of 96 cores; 40 % of 100
    assert s.values[0, 2] == 5  # the -1 marker at t=60 is missing, not averaged in
    assert np.isnan(s.values[1, 2])  # 101 marker -> missing
    assert s.values[0, 3] == 3.0
    (d / "machine_usage.csv").write_text("time,cpu\n1,2\n")
    with pytest.raises(TraceFormatError, match="machine_usage.csv.*Fix"):
        load_trace(d, "alibaba")


def test_google_gaps_and_missing_resources(tmp_path: Path) -> None:
    d = tmp_path / "google" / "113"
    d.mkdir(parents=True)
    times = [300, 600, 1500]  # 900 and 1200 absent: the task moved
    df = pd.DataFrame(
        {
            "time": [t * 1_000_000 for t in times],
            "avg_cpu_usage": [0.1, 0.2, 0.3],
            "avg_memory_usage": [0.01, 0.02, 0.03],
            "cpu_limit": 0.5,
            "memory_limit": 0.05,
        }
    )
    df.to_csv(d / "5-300000000-1500000000.csv.gz", index=False)
    (s,) = load_trace(tmp_path / "google", "google")
    assert s.series_id == "google:113/5" and len(s) == 5
    assert np.isnan(s.values[2:4]).all() and np.isnan(s.values[:, 2:]).all()
    assert s.meta["limits"].shape == (5, 2)
    df.drop(columns=["avg_memory_usage"]).to_csv(d / "5-300000000-1500000000.csv.gz", index=False)
    with pytest.raises(TraceFormatError, match="avg_memory_usage.*Fix"):
        load_trace(tmp_path / "google", "google")


def test_generic_csv_and_parquet(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "series_id": ["a", "a", "a", "b", "b", "a"],
            "timestamp": [1000, 1060, 1240, 5000, 5060, 1120],
            "cpu": [1.0, 2.0, 4.0, 0.5, 0.7, 3.0],
            "mem": [1e9, np.nan, 3e9, 2e9, 2e9, 1e9],
        }
    )
    csv = tmp_path / "t.csv"
    df.to_csv(csv, index=False)
    pq = tmp_path / "t.parquet"
    df.to_parquet(pq)
    for path in (csv, pq):
        a, b = load_trace(path, "generic")
        assert (a.series_id, b.series_id) == ("a", "b")
        assert a.step_s == 60 and len(a) == 5 and np.isnan(a.values[3]).all()  # t=1180 gap
        assert np.isnan(a.values[:, 2:]).all()  # no disk/net columns: missing throughout
        assert a.values[1, 0] == 2.0 and np.isnan(a.values[1, 1])
    (a,) = load_trace(csv, "generic", step_s=120, ids=["a"])
    np.testing.assert_allclose(a.values[:, 0], [1.0, 2.5, 4.0])  # nearest 120-s step, averaged
    assert detect_format(csv) == "generic" and detect_format(pq) == "generic"


def test_generic_bad_input(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    pd.DataFrame({"id": [1], "timestamp": [0], "cpu": [1.0]}).to_csv(p, index=False)
    with pytest.raises(TraceFormatError, match=r"x\.csv.*series_id.*Fix"):
        load_trace(p, "generic")
    pd.DataFrame({"series_id": [1], "timestamp": [0], "gpu": [1.0]}).to_csv(p, index=False)
    with pytest.raises(TraceFormatError, match="no resource column"):
        load_trace(p, "generic")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(TraceFormatError, match=r"bad\.parquet.*Fix"):
        load_trace(bad, "generic")
    with pytest.raises(TraceFormatError, match="unknown format"):
        load_trace(p, "excel")


def test_resample_and_infer_step() -> None:
    s = resample("x", np.array([0.0, 290.0, 610.0, 905.0]), np.ones((4, 4)), 300.0)
    assert len(s) == 4 and np.isfinite(s.values).all()
    assert infer_step(np.array([0, 10, 20, 100, 130.0]), np.array(["a", "a", "a", "b", "b"])) == 10


def test_real_bitbrains_vm_loads() -> None:
    (s,) = load_trace(SHARED / "bitbrains-rnd-2013-07", ids=["1"])
    assert s.step_s == 300 and 8000 < len(s) <= 8700
    assert (np.nanmedian(s.values, axis=0) >= 0).all() and s.observed().all()


def test_a_trace_window_is_parsed_once_and_again_when_the_file_changes(tmp_path: Path, monkeypatch) -> None:
    import prae.traces
    from prae.workloads.tracesrc import load_window

    monkeypatch.setenv("PRAE_CACHE_DIR", str(tmp_path / "cache"))
    csv = tmp_path / "t.csv"
    csv.write_text("series_id,timestamp,cpu,mem\n" + "".join(f"a,{300 * i},{i},{2 * i}\n" for i in range(10)))
    first = load_window(str(csv), 2, 3)
    assert first[:, 0].tolist() == [2.0, 3.0, 4.0]
    assert len(list((tmp_path / "cache" / "traces").glob("*.npy"))) == 1

    def parse_again(*a, **k):
        raise AssertionError("parsed again")

    monkeypatch.setattr(prae.traces, "load_trace", parse_again)
    np.testing.assert_array_equal(load_window(str(csv), 2, 3), first)  # from the cache
    monkeypatch.undo()
    monkeypatch.setenv("PRAE_CACHE_DIR", str(tmp_path / "cache"))
    csv.write_text("series_id,timestamp,cpu,mem\n" + "".join(f"a,{300 * i},{10 * i},{2 * i}\n" for i in range(12)))
    assert load_window(str(csv), 2, 3)[:, 0].tolist() == [20.0, 30.0, 40.0]  # edited: read again


def test_a_cached_trace_window_is_read_without_the_trace_parsers(tmp_path: Path) -> None:
    # The parsers bring pandas (~0.5 CPU-s): a replay or service shadow whose trace is in the
    # cache must not pay for it.
    import subprocess
    import sys

    csv = tmp_path / "t.csv"
    csv.write_text("series_id,timestamp,cpu,mem\n" + "".join(f"a,{300 * i},{i},{2 * i}\n" for i in range(10)))
    script = (
        "import sys; from prae.workloads.tracesrc import load_window; "
        f"w = load_window({str(csv)!r}, 2, 3); "
        "print(w[:, 0].tolist(), 'pandas' in sys.modules, 'prae.traces' in sys.modules)"
    )
    env = {**os.environ, "PRAE_CACHE_DIR": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-1500:]
    assert runs[0].stdout.split() == ["[2.0,", "3.0,", "4.0]", "True", "True"]  # parsed, then cached
    assert runs[1].stdout.split() == ["[2.0,", "3.0,", "4.0]", "False", "False"]
