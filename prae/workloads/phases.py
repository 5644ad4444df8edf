"""Progress through a fixed sequence of weighted phases, e.g. generate 20 %, scan 20 %, ...

The weights put each phase at the same progress range in the live run and in its shadow,
which is what lets :func:`prae.telemetry.alignment.align_shadow_by_progress` match them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from prae.workloads.context import WorkloadContext


class PhasePlan:
    def __init__(self, ctx: WorkloadContext, phases: Sequence[tuple[str, float]]) -> None:
        total = sum(w for _, w in phases)
        self.ctx = ctx
        self.start: dict[str, float] = {}
        self.width: dict[str, float] = {}
        at = 0.0
        for name, weight in phases:
            self.start[name] = at
            self.width[name] = weight / total
            at += weight / total

    def step(self, phase: str, done: float, total: float) -> None:
        """``done`` of ``total`` units of ``phase`` are finished."""
        frac = 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
        self.ctx.report_progress(self.start[phase] + self.width[phase] * frac, phase)


def flush_and_drop(path: str | os.PathLike[str]) -> None:
    """fsync a file we wrote and drop it from the page cache, so reading it back is real disk
    I/O, as it would be for data another job wrote, not a page-cache hit."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
