"""One telemetry sample of a workload's process tree, in the units of :mod:`prae.resources`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TelemetrySample:
    """What one role (live or shadow) of a workload used over the interval ending at ``ts``.

    Rates (``cpu``, ``disk``, ``net``) are averages over the interval since the previous
    sample; ``mem`` is the resident set at ``ts``. See :mod:`prae.telemetry.process_tree`
    for exactly how each is measured.
    """

    ts: float  # unix seconds
    cpu: float  # cores (CPU-seconds/second over the process tree)
    mem: float  # bytes, RSS summed over the tree
    disk: float  # bytes/s read+write (block layer)
    net: float  # bytes/s sent+received (TCP payload)
    progress: float = math.nan  # 0..1 as reported by the workload, NaN if unknown
    phase: str = ""  # the phase the workload last reported ("" if none)

    def as_array(self) -> np.ndarray:
        """Shape (4,), in ``prae.resources.RESOURCES`` order (cpu, mem, disk, net)."""
        return np.array([self.cpu, self.mem, self.disk, self.net], dtype=np.float64)
