"""The vocabulary every layer shares: which resources PRAE forecasts, and in what units."""

from __future__ import annotations

# Order matters: arrays of shape (..., R) use this order on their last resource axis.
RESOURCES: tuple[str, ...] = ("cpu", "mem", "disk", "net")
CPU, MEM = RESOURCES.index("cpu"), RESOURCES.index("mem")
# The resources reservations are made of (placement-group bundles, autoscaler requests);
# disk and network are forecast but not reserved.
ALLOCATED: tuple[int, ...] = (CPU, MEM)

UNITS: dict[str, str] = {
    "cpu": "cores",  # CPU-seconds per second over the process tree
    "mem": "bytes",  # resident set size summed over the process tree
    "disk": "bytes/s",  # read + write to block devices
    "net": "bytes/s",  # sent + received on sockets
}

# Forecast quantile levels. q0.9 and q0.1 bound the 80 % interval; the upper tail
# (0.95, 0.99) is what the allocation policy spends a violation budget against.
QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9, 0.95, 0.99)


def quantile_column(q: float) -> str:
    """Column name of a quantile level, e.g. ``0.9 -> "q0.9"``."""
    return f"q{q:g}"


QUANTILE_COLUMNS: tuple[str, ...] = tuple(quantile_column(q) for q in QUANTILES)
