"""Who is served first: the confidence -> priority rule, one pure function.

Ray keeps no order among pending placement groups, so the broker serves its own queue in
the order this rule gives, and a cluster budget is spent in the same order (what does not
fit is asked of the autoscaler instead of reserved).
"""

from __future__ import annotations

import math

# Confidences closer than this count as equal, so that forecast noise of a few
# hundredths does not reshuffle the queue every tick.
CONFIDENCE_STEP = 0.1


def confidence_band(confidence: float) -> int:
    """The confidence in whole steps of ``CONFIDENCE_STEP``, rounded down: 0.83 -> 8, 0.86 -> 8,
    0.79 -> 7, 1.0 -> 10. Higher band = served earlier."""
    return int(math.floor(max(0.0, min(1.0, confidence)) / CONFIDENCE_STEP + 1e-9))


def serve_rank(
    priority: int,
    confidence: float,
    max_pending_s: float | None,
    needed_at: float,
    workload: str,
) -> tuple[float, float, float, float, str]:
    """Sort key of a request: smaller is served first. Compared in this order:

    1. the workload's profile priority, higher first: an operator's word beats any forecast;
    2. the request's confidence band (:func:`confidence_band`), higher first: capacity held
       for a forecast we are sure of is the capacity most likely to be used;
    3. the SLO, tighter ``max_pending_s`` first (no SLO sorts last): among equally sure
       requests, the one that tolerates the shortest wait goes first;
    4. ``needed_at``, earlier first; 5. the workload name, so the order is total.

    Worked example: A (priority 0, confidence 0.86, SLO 30 s), B (0, 0.83, SLO 5 s) and
    C (1, 0.40, no SLO) are served C, B, A: C by priority; A and B share band 8, and B's
    SLO is tighter.
    """
    slo = max_pending_s if max_pending_s is not None else math.inf
    return (-float(priority), -float(confidence_band(confidence)), slo, needed_at, workload)
