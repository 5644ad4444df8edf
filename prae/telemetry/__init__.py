"""Telemetry of workload process trees (no Ray, no root).

sample.py        TelemetrySample: cpu cores, mem bytes, disk and net bytes/s, progress
process_tree.py  ProcessTreeSampler: /proc-based sampler of a whole tree, Ray workers included
sockets.py       TCP byte counters per socket via netlink sock_diag
alignment.py     align_shadow_by_progress: the shadow at the live run's future progress
"""

from prae.telemetry.alignment import align_shadow_by_progress, expected_progress
from prae.telemetry.process_tree import TAG_ENV, ProcessTreeSampler, TreeReading
from prae.telemetry.sample import TelemetrySample

__all__ = [
    "TAG_ENV",
    "ProcessTreeSampler",
    "TelemetrySample",
    "TreeReading",
    "align_shadow_by_progress",
    "expected_progress",
]
