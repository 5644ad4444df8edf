"""A workload process sampled on a thread, its samples buffered until the engine drains them.

Plain Python (no Ray): ``WorkloadHost`` is a thin actor around it. Two things matter on a
loaded machine, where one sample's /proc reads of a busy process tree can take seconds:

- ``drain`` never waits for a sample in progress. The process's lock is the sampler's while
  it reads /proc; a drain that asked the process for its exit code would wait behind it, and
  with it the engine's whole tick (every workload's forecasts), not just this workload's.
- a sample that overran skips the slots it missed instead of catching up in a burst of
  samples milliseconds apart, whose rates would be noise.

Samples are taken on the wall-clock grid of ``prae.engine.schedule`` (multiples of the
interval), which the engine's ticks follow.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from prae.engine.schedule import grid_after
from prae.telemetry.sample import TelemetrySample


class SampledProcess(Protocol):
    """What the thread needs of a process (``prae.workloads.process.WorkloadProcess``)."""

    def sample(self) -> TelemetrySample: ...
    def exit_code(self) -> int | None: ...
    def result(self) -> dict[str, Any] | None: ...
    @property
    def cost_cpu_seconds(self) -> float: ...


class SamplingThread:
    def __init__(self, proc: SampledProcess, interval_s: float) -> None:
        self.proc = proc
        self.interval_s = interval_s
        self.samples: list[TelemetrySample] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.error: str | None = None
        self.exit_code: int | None = None  # as the sampler saw it, after its last sample
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="prae-sampler", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        # The first sample at the first grid point ahead: its rates are since the process
        # started (a sample at once and another a moment later at the grid point would give
        # rates over milliseconds, finer than /proc's 10-ms CPU ticks).
        slot = grid_after(time.time(), self.interval_s)
        while not self.stopped.wait(max(0.0, slot - time.time())):
            try:
                sample = self.proc.sample()
                with self.lock:
                    self.samples.append(sample)
            except Exception as exc:  # a vanished process between checks: the exit code tells
                self.error = repr(exc)
            code = self.proc.exit_code()
            if code is not None:
                with self.lock:  # after the last sample: a drain that sees the code has it too
                    self.exit_code = code
                return
            # The next grid point; after an overrun, the first one still ahead (the missed ones
            # are skipped, the phase kept). Never the same slot again, even if woken early.
            slot = grid_after(max(time.time(), slot), self.interval_s)

    def drain(self) -> dict[str, Any]:
        """The samples since the last drain and the state the sampler last saw; once the
        sampler has stopped (the process ended or ``stop``), the process is asked."""
        with self.lock:
            samples, self.samples = self.samples, []
            code = self.exit_code
        if code is None and (self.thread is None or not self.thread.is_alive()):
            code = self.proc.exit_code()
        return {
            "samples": samples,
            "exit_code": code,
            "result": self.proc.result() if code is not None else None,
            "cost_cpu_seconds": self.proc.cost_cpu_seconds,
            "error": self.error,
        }

    def stop(self) -> None:
        self.stopped.set()
