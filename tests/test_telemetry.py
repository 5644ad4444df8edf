"""Telemetry: the process-tree sampler against real processes, progress files, alignment."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from prae.resources import RESOURCES
from prae.telemetry.alignment import align_shadow_by_progress, expected_progress
from prae.telemetry.process_tree import ProcessTreeSampler
from prae.telemetry.sample import TelemetrySample
from prae.telemetry.sockets import TcpCounters, socket_inodes
from prae.workloads.progress import ProgressWriter, read_progress

# A parent that holds memory, writes a file, and runs a short-lived CPU-burning child and a
# TCP client child that streams 4 MB to it over loopback.
TREE_SCRIPT = textwrap.dedent(
    """
    import os, socket, subprocess, sys, time
    blob = bytearray(80 * 1024 * 1024)
    for i in range(0, len(blob), 4096):
        blob[i] = 1
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
    port = srv.getsockname()[1]
    client = subprocess.Popen([sys.executable, "-c",
        "import socket, sys, time\\n"
        f"s = socket.create_connection(('127.0.0.1', {port}))\\n"
        "for _ in range(40):\\n    s.sendall(b'x' * 100_000); time.sleep(0.02)\\n"
        "time.sleep(1.0)\\n"])
    conn, _ = srv.accept()
    got = 0
    while got < 4_000_000:
        got += len(conn.recv(1 << 16))
    burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.6: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    with open(sys.argv[1], "wb") as f:
        f.write(os.urandom(8 * 1024 * 1024)); f.flush(); os.fsync(f.fileno())
    client.wait()
    time.sleep(0.3)
    """
)


def test_sample_array_is_in_resource_order() -> None:
    s = TelemetrySample(ts=1.0, cpu=0.5, mem=2e9, disk=3e6, net=4e3, progress=0.25)
    assert RESOURCES == ("cpu", "mem", "disk", "net")
    np.testing.assert_array_equal(s.as_array(), [0.5, 2e9, 3e6, 4e3])
    assert math.isnan(TelemetrySample(1.0, 0, 0, 0, 0).progress)


def test_sampler_measures_a_whole_tree(tmp_path) -> None:
    script = tmp_path / "tree.py"
    script.write_text(TREE_SCRIPT)
    start = time.time()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "out.bin")], start_new_session=True
    )
    sampler = ProcessTreeSampler(proc.pid, start_ts=start)
    readings = []
    try:
        while True:
            time.sleep(0.2)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                sampler.finish(
                    usage.ru_utime + usage.ru_stime, (usage.ru_inblock + usage.ru_oublock) * 512.0
                )
            readings.append(sampler.sample())
            if pid:
                break
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    # CPU: every tick of the tree, the short-lived children included, equals the root's
    # final rusage (which holds the children it reaped), to the 10 ms tick.
    assert sampler.cpu_seconds == pytest.approx(usage.ru_utime + usage.ru_stime, abs=0.05)
    assert sampler.cpu_seconds > 0.6  # at least the burning child
    assert max(r.mem for r in readings) > 80e6
    assert max(r.nprocs for r in readings) >= 2
    assert sampler.disk_bytes >= 8 * 1024 * 1024
    # 4 MB over loopback, counted at both ends (sent by the child, received by the parent).
    assert 7.5e6 <= sampler.net_bytes <= 8.5e6
    assert all(r.cpu >= 0 and r.disk >= 0 and r.net >= 0 for r in readings)


def test_first_sample_without_start_is_a_baseline() -> None:
    sampler = ProcessTreeSampler(os.getpid())
    first = sampler.sample()
    assert first.cpu == 0.0 and first.disk == 0.0 and first.mem > 0
    t = time.process_time()
    while time.process_time() - t < 0.3:
        pass
    burnt = time.process_time() - t
    second = sampler.sample()
    # The CPU-seconds the sample accounts for are the ones this process burnt (10 ms ticks).
    assert second.cpu * second.dt == pytest.approx(burnt, abs=0.05)


def test_tcp_counters_count_payload_per_socket() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = socket.create_connection(srv.getsockname())
    s, _ = srv.accept()
    try:
        counters = TcpCounters()
        inodes = socket_inodes(os.getpid())
        before = counters.read(inodes)
        c.sendall(b"y" * 500_000)
        got = 0
        while got < 500_000:
            got += len(s.recv(1 << 16))
        time.sleep(0.05)
        after = counters.read(inodes)
        moved = sum(after[i] - before.get(i, 0) for i in after)
        assert moved == 1_000_000  # sent + received
        assert counters.dumps == 1  # later reads are exact look-ups, not dumps
        c.close()
        time.sleep(0.05)
        assert len(counters.read(socket_inodes(os.getpid()))) == len(after) - 1
    finally:
        for x in (c, s, srv):
            x.close()


def test_progress_file_round_trip_and_torn_lines(tmp_path) -> None:
    path = tmp_path / "progress"
    assert math.isnan(read_progress(path).fraction)
    w = ProgressWriter(path, min_interval_s=0.0)
    w.report(0.25, "scan")
    p = read_progress(path)
    assert p.fraction == 0.25 and p.phase == "scan"
    # A command appending lines: the last complete one counts, a half-written one is ignored.
    path.write_text("0.1 load\n0.5 join phase\n0.9")
    p = read_progress(path)
    assert p.fraction == 0.5 and p.phase == "join phase"
    path.write_text("garbage\n")
    assert math.isnan(read_progress(path).fraction)


# ----------------------------------------------------------------------------- alignment


def test_expected_progress_extrapolates_the_recent_rate() -> None:
    p = np.array([np.nan, 0.0, 0.1, 0.2, 0.3, 0.4, 0.95])
    e = expected_progress(p, lead_steps=2)
    assert math.isnan(e[0])
    assert e[4] == pytest.approx(0.5)
    assert e[6] == 1.0  # capped


def test_alignment_picks_the_shadow_at_the_live_workloads_future_progress() -> None:
    # The shadow went through progress 0..1 in 11 samples; its value = 10 × its progress.
    sh_p = np.linspace(0.0, 1.0, 11)
    sh_v = np.repeat((sh_p * 10)[:, None], 4, axis=1)
    live_p = np.arange(0, 50) / 100.0  # 0.01 per step
    out = align_shadow_by_progress(live_p, sh_p, sh_v, lead_steps=10)
    assert out.shape == (50, 4)
    # Step 20: live at 0.20, expected 0.30 after 10 steps -> the shadow's sample at 0.3.
    assert out[20, 0] == pytest.approx(3.0)
    # Between shadow samples: the one whose interval holds the span (0.34-0.35 in (0.3, 0.4]).
    assert out[25, 0] == pytest.approx(4.0)  # target 0.35 -> reached at 0.4


def test_alignment_is_nan_where_unknown_and_respects_time() -> None:
    sh_p = np.array([np.nan, 0.1, 0.3, 0.25, 0.5])  # a dip is ignored
    sh_v = np.arange(20, dtype=float).reshape(5, 4)
    live_p = np.array([np.nan, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    out = align_shadow_by_progress(live_p, sh_p, sh_v, lead_steps=1)
    assert np.isnan(out[0]).all()  # live progress unknown
    assert out[1, 0] == sh_v[1, 0]  # span 0.1-0.1 (no rate yet) -> first sample at >= 0.1
    assert out[3, 0] == pytest.approx(sh_v[2, 0])  # span 0.2-0.3, inside sample 2's (0.1, 0.3]
    assert np.isnan(out[6]).all() and np.isnan(out[7]).all()  # beyond 0.5, what the shadow saw
    # With timestamps a row only sees shadow samples taken by then.
    live_ts = np.array([0.0, 1.0, 2.0, 5.5, 6.0, 7.0, 8.0, 9.0])
    shadow_ts = np.array([0.0, 1.0, 5.0, 6.0, 7.0])
    causal = align_shadow_by_progress(live_p, sh_p, sh_v, 1, live_ts=live_ts, shadow_ts=shadow_ts)
    assert causal[1, 0] == sh_v[1, 0]
    assert out[2, 0] == pytest.approx(sh_v[2, 0]) and np.isnan(causal[2]).all()  # 0.3 reached only at t=5
    assert causal[3, 0] == pytest.approx(sh_v[2, 0])  # at t=5.5 it has been seen


def test_alignment_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shadow_values"):
        align_shadow_by_progress(np.zeros(3), np.zeros(2), np.zeros((3, 4)), 1)
    with pytest.raises(ValueError, match="lead_steps"):
        align_shadow_by_progress(np.zeros(3), np.zeros(2), np.zeros((2, 4)), -1)


def test_alignment_targets_the_middle_of_the_live_samples_interval() -> None:
    """A live sample's rates average the interval that ends at it: the shadow is read over
    the progress of the step before the one reported. A finely sampled shadow whose rate is
    1000 x its progress (each sample the mean of its own interval, 0.001 long) gives the
    value at the interval's middle."""
    sh_p = np.linspace(0.0, 1.0, 1001)
    sh_v = np.repeat((sh_p * 1000 - 0.5)[:, None], 4, axis=1)
    live_p = np.arange(0, 50) / 100.0
    out = align_shadow_by_progress(live_p, sh_p, sh_v, lead_steps=0)
    assert out[20, 0] == pytest.approx(195.0)  # reported 0.20, the interval 0.19-0.20
    assert align_shadow_by_progress(live_p, sh_p, sh_v, lead_steps=3)[20, 0] == pytest.approx(225.0)


def test_alignment_averages_the_shadow_over_the_live_steps_span() -> None:
    """A shadow sampled twice per live step that reads 0.1 and 0.3 over the two halves of
    each step (CPU ticks at a short interval): every row is the step's mean, 0.2, not
    whichever half held the middle; a NaN resource is averaged over the samples that know
    it; a span the shadow has not yet passed the end of is not known."""
    sh_p = np.arange(1, 41) / 40.0  # two samples per 0.05 of progress
    sh_v = np.zeros((40, 4))
    sh_v[:, 0] = np.tile([0.1, 0.3], 20)
    sh_v[:, 1] = 5.0
    sh_v[::2, 1] = np.nan  # mem known in every second sample only
    live_p = np.arange(0, 19) * 0.05  # 0.05 per step
    out = align_shadow_by_progress(live_p, sh_p, sh_v, lead_steps=2)
    assert out[5:17, 0] == pytest.approx(np.full(12, 0.2))
    assert out[5:17, 1] == pytest.approx(np.full(12, 5.0))
    # causal: the row of step 10 (span 0.55-0.60) needs the sample at 0.60 (index 23)
    shadow_ts = np.arange(40, dtype=float)
    live_ts = np.full(19, 22.0)
    assert np.isnan(align_shadow_by_progress(live_p, sh_p, sh_v, 2, live_ts=live_ts, shadow_ts=shadow_ts)[10]).all()
    live_ts[10] = 23.0
    causal = align_shadow_by_progress(live_p, sh_p, sh_v, 2, live_ts=live_ts, shadow_ts=shadow_ts)
    assert causal[10, 0] == pytest.approx(0.2)
