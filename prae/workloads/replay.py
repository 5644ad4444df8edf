"""Built-in ``replay``: a real trace's resource curve reproduced on this machine.

A window of a trace (``params.trace``, ``start``, ``steps``; see :mod:`prae.workloads.tracesrc`)
is scaled so its peaks are ``cpu_max`` cores, ``mem_max`` bytes, ``disk_max`` and ``net_max``
bytes/s, and played with one trace row per ``step_s`` seconds (Bitbrains rows are 300 s: the
default 1 s is a 300× time compression) by :class:`~prae.workloads.curve.CurvePlayer`.

Shadow (sample or simulate): the same curve at ``fraction`` of the cost, ahead of the live
run: compressed in time as far as its sampling resolves (steps of ``step_s × fraction``, at
least two sampling intervals), the rest of the saving by a smaller amplitude
(:meth:`~prae.workloads.curve.Curve.shadow`). It reaches every point of the curve first.
"""

from __future__ import annotations

from typing import Any

from prae.workloads.context import WorkloadContext
from prae.workloads.curve import Curve, play_curve, shadow_min_step_s
from prae.workloads.tracesrc import load_window, scale_to_peaks


def trace_curve(params: Any) -> Curve:
    window = load_window(str(params["trace"]), int(params["start"]), int(params["steps"]))
    peaks = (
        float(params["cpu_max"]),
        float(params["mem_max"]),
        float(params["disk_max"]),
        float(params["net_max"]),
    )
    v = scale_to_peaks(window, peaks)
    return Curve(v[:, 0], v[:, 1], v[:, 2], v[:, 3], float(params["step_s"]))


def run(ctx: WorkloadContext) -> dict[str, Any]:
    curve = trace_curve(ctx.params)
    if ctx.is_shadow:
        curve = curve.shadow(ctx.fraction, shadow_min_step_s())
    out = play_curve(ctx, curve)
    out["trace"] = ctx.params["trace"]
    return out
