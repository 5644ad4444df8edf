"""The sampling thread a WorkloadHost runs: drains never wait for a slow sample, an overrun
skips its missed slots, and the exit code comes with the last sample. No Ray."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from prae.engine.sampling import SamplingThread
from prae.engine.schedule import grid_after, next_tick, tick_lag
from prae.telemetry.sample import TelemetrySample


class SlowProcess:
    """Like WorkloadProcess: ``sample`` and ``exit_code`` share one lock. ``stall`` holds
    the next sample (lock held) until ``release``; the process exits after ``lifetime``
    samples."""

    def __init__(self, lifetime: int = 10_000) -> None:
        self._lock = threading.Lock()
        self.lifetime = lifetime
        self.taken = 0
        self.stall_next = False
        self.stalled = threading.Event()
        self.release = threading.Event()

    def sample(self) -> TelemetrySample:
        with self._lock:
            if self.stall_next:
                self.stall_next = False
                self.stalled.set()
                self.release.wait(10)
            self.taken += 1
            return TelemetrySample(time.time(), 1.0, 1.0, 0.0, 0.0)

    def exit_code(self) -> int | None:
        with self._lock:
            return 0 if self.taken >= self.lifetime else None

    def result(self) -> dict[str, Any] | None:
        return {"ok": True} if self.taken >= self.lifetime else None

    @property
    def cost_cpu_seconds(self) -> float:
        return float(self.taken)


def test_a_drain_returns_while_a_sample_is_stuck_and_the_overrun_skips_its_missed_slots():
    proc = SlowProcess()
    s = SamplingThread(proc, interval_s=0.05)
    s.start()
    try:
        time.sleep(0.3)
        proc.stall_next = True
        assert proc.stalled.wait(5)
        t0 = time.monotonic()
        before = s.drain()  # the process's lock is the stuck sample's
        assert time.monotonic() - t0 < 0.5
        assert before["samples"] and before["exit_code"] is None
        time.sleep(1.0)  # 20 slots missed
        assert s.drain()["samples"] == []
        released_at = time.time()
        proc.release.set()
        time.sleep(0.5)
        after = [x.ts for x in s.drain()["samples"]]
        # the stuck sample, then back to every 0.05 s: not 20 catching up at once
        assert sum(ts < released_at + 0.1 for ts in after) <= 4, after
        assert len(after) >= 4
    finally:
        s.stop()
        proc.release.set()


def test_the_exit_code_comes_with_the_last_sample():
    proc = SlowProcess(lifetime=6)
    s = SamplingThread(proc, interval_s=0.01)
    s.start()
    seen, code = 0, None
    deadline = time.monotonic() + 10
    while code is None and time.monotonic() < deadline:
        d = s.drain()
        seen += len(d["samples"])
        code = d["exit_code"]
        time.sleep(0.005)
    assert code == 0 and seen == 6  # every sample drained by the drain that reports the exit
    assert s.drain()["result"] == {"ok": True}


def test_a_stopped_sampler_asks_the_process():
    proc = SlowProcess()
    s = SamplingThread(proc, interval_s=0.01)
    assert s.drain()["exit_code"] is None  # never started
    s.start()
    time.sleep(0.05)
    s.stop()
    assert s.thread is not None
    s.thread.join(5)
    proc.taken = proc.lifetime  # the process ended after the sampler stopped
    assert s.drain()["exit_code"] == 0


def test_samples_are_taken_on_the_wall_clock_grid():
    """Whatever the moment it started, the sampler takes its samples at multiples of its
    interval (the grid the engine's ticks follow), not at start + k intervals."""
    proc = SlowProcess()
    time.sleep(0.037 - time.time() % 0.1 + 0.1)  # start off the grid
    s = SamplingThread(proc, interval_s=0.1)
    s.start()
    time.sleep(1.25)
    s.stop()
    ts = np.array([x.ts for x in s.drain()["samples"]])
    assert 10 <= len(ts) <= 13, ts
    off = (ts + 0.05) % 0.1 - 0.05  # distance to the nearest grid point
    assert np.mean(np.abs(off) < 0.02) >= 0.9, off
    assert np.diff(ts).min() > 0.05, ts  # one sample a slot: never two in a burst


def test_the_grid_and_the_next_tick():
    assert grid_after(1000.3, 1.0) == 1001.0
    assert grid_after(1001.0, 1.0) == 1002.0  # strictly after
    assert grid_after(1000.3, 1.0, 0.5) == 1000.5
    assert grid_after(1000.5, 60.0, 1.0) == 1021.0
    assert tick_lag(1.0) == 0.5 and tick_lag(60.0) == 1.0 and tick_lag(0.2) == 0.1
    assert next_tick(1000.5, 1000.7, 1.0) == (1001.5, 1001.5)  # on time: the next slot
    assert next_tick(1000.5, 1001.5, 1.0) == (1001.5, 1001.5)  # ended on it: at once, as it
    # overran past two slots: at once, as the latest slot passed, not twice back to back
    assert next_tick(1000.5, 1003.2, 1.0) == (1003.2, 1002.5)
