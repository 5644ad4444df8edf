"""Progress from a workload to its sampler through one small file: cheap and crash-safe.

The file holds one line ``<fraction> <unix ts> <phase>``. A Python workload rewrites it
atomically (write a temporary file, ``os.replace``), at most every ``min_interval_s`` unless
the phase changes. Any other program (kind ``command``) may also append such lines to
``$PRAE_PROGRESS_FILE``, as ``<fraction> [phase]``: the reader takes the last complete line. If the workload crashes the
file keeps the last value it reported.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Progress:
    fraction: float  # 0..1, NaN if never reported
    phase: str
    ts: float


UNKNOWN = Progress(math.nan, "", math.nan)


class ProgressWriter:
    def __init__(self, path: str | os.PathLike[str], min_interval_s: float = 0.1) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.min_interval_s = min_interval_s
        self._last_write = 0.0
        self._last: Progress = UNKNOWN

    def report(self, fraction: float, phase: str | None = None, *, force: bool = False) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        phase = self._last.phase if phase is None else phase.replace("\n", " ").strip()
        now = time.time()
        changed_phase = phase != self._last.phase
        self._last = Progress(fraction, phase, now)
        if (
            force
            or changed_phase
            or fraction >= 1.0
            or now - self._last_write >= self.min_interval_s
        ):
            self.tmp.write_text(f"{fraction:.6f} {now:.3f} {phase}\n")
            os.replace(self.tmp, self.path)
            self._last_write = now

    @property
    def last(self) -> Progress:
        return self._last


def read_progress(path: str | os.PathLike[str]) -> Progress:
    """The last complete line of the progress file (``UNKNOWN`` if none yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 512))
            tail = f.read()
    except OSError:
        return UNKNOWN
    lines = tail.split(b"\n")
    for line in reversed(lines[:-1]):  # a line without its newline may be half-written
        parts = line.decode("utf-8", "replace").strip().split(None, 2)
        try:
            fraction = float(parts[0])
        except (ValueError, IndexError):
            continue
        if not math.isfinite(fraction):
            continue
        # "<fraction> <ts> <phase>" as ProgressWriter writes it, or "<fraction> [phase]".
        ts, rest = math.nan, parts[1:]
        if rest:
            try:
                ts, rest = float(rest[0]), rest[1:]
            except ValueError:
                rest = [" ".join(rest)]
        return Progress(min(1.0, max(0.0, fraction)), " ".join(rest).strip(), ts)
    return UNKNOWN


class ProgressEstimate:
    """The progress at the moment of a sample, not at the last report.

    A workload reports progress in steps (a replay at the end of each trace step, an ETL
    per partition), so the reported fraction lags the work by up to one step, by however
    long ago the last report was: a random phase between sampling and the workload's
    steps. Aligning a shadow on it matched a replay's disk bursts one live step late in one
    run and on time in another. Here the last report is moved on at the rate between the
    last two distinct reports, by the time since it was made, for at most one such step.
    Worked number: reports 0.40 at t=10 and 0.41 at t=10.5; sampled at 10.8 -> 0.416.
    Never decreasing while the reports do not: a workload whose steps vary (an ETL's
    partitions) is moved past its next report at times, and then held there until the
    reports catch up.
    """

    def __init__(self) -> None:
        self._last: Progress = UNKNOWN
        self._prev: Progress = UNKNOWN
        self._out = -math.inf

    def at(self, report: Progress, now: float) -> float:
        if math.isnan(report.fraction):
            return report.fraction
        if report.fraction != self._last.fraction:
            if report.fraction < self._last.fraction:  # the workload itself went back: follow it
                self._out = -math.inf
            self._prev, self._last = self._last, report
        self._out = max(self._out, self._moved_on(now))
        return self._out

    def _moved_on(self, now: float) -> float:
        last, prev = self._last, self._prev
        if math.isnan(last.ts) or math.isnan(prev.ts) or last.ts <= prev.ts or last.fraction <= prev.fraction:
            return last.fraction
        step = last.fraction - prev.fraction
        moved = step / (last.ts - prev.ts) * max(0.0, now - last.ts)
        return min(1.0, last.fraction + min(step, moved))
