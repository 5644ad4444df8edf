"""Shadow mode ``simulate`` for kinds without a timeline of their own (etl, train, python,
command): the workload's profile phases played as a resource curve.

Each phase of ``profile.phases`` covers progress ``(previous progress_end, progress_end]`` with
its ``cpu`` (cores) and ``memory`` (bytes); a phase that leaves one out keeps the previous
phase's value (0 at the start). Disk and network are not in a profile and stay 0. The curve
lasts ``params.simulate_s`` seconds if given, else 5 % of an estimate of the live run's length
from its parameters, in 50 steps, and reports the phase names as it goes.

With ``shadow.source: history`` the curve is instead the workload's previous complete live
run, all four resources, handed over by the shadow's host (:mod:`prae.workloads.history`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from prae.errors import WorkloadError
from prae.workloads.context import WorkloadContext
from prae.workloads.curve import Curve, play_curve, shadow_min_step_s
from prae.workloads.history import from_bytes, shadow_curve

# Set by the shadow's host to the file of the previous run's profile (history.to_bytes).
HISTORY_ENV = "PRAE_SHADOW_HISTORY"

STEPS = 50
# Seconds per unit of work on one core here (measured): used only to size a simulation.
_ETL_S_PER_ROW = 6.5e-6
_TRAIN_S_PER_SAMPLE_EPOCH = 5.5e-5


def estimated_live_seconds(kind: str, params: Any) -> float:
    if kind == "etl":
        return float(params.get("rows", 8_000_000)) * _ETL_S_PER_ROW
    if kind == "train":
        return (
            float(params.get("samples", 300_000))
            * float(params.get("epochs", 4))
            * _TRAIN_S_PER_SAMPLE_EPOCH
        )
    return 60.0


def profile_curve(ctx: WorkloadContext) -> Curve:
    if ctx.spec is None or not ctx.spec.profile.phases:
        raise WorkloadError(f"workload '{ctx.name}': shadow mode 'simulate' needs profile.phases")
    phases = ctx.spec.profile.phases
    duration = ctx.params.get("simulate_s")
    if duration is None:
        duration = max(1.0, estimated_live_seconds(ctx.kind, ctx.params) * ctx.fraction)
    cpu = np.zeros(STEPS)
    mem = np.zeros(STEPS)
    names = []
    last_cpu, last_mem = 0.0, 0.0
    for i in range(STEPS):
        at = (i + 0.5) / STEPS
        phase = next((p for p in phases if at <= p.progress_end), phases[-1])
        last_cpu = float(phase.cpu) if phase.cpu is not None else last_cpu
        last_mem = float(phase.mem) if phase.mem is not None else last_mem
        cpu[i], mem[i] = last_cpu, last_mem
        names.append(phase.name)
    zeros = np.zeros(STEPS)
    return Curve(cpu, mem, zeros, zeros.copy(), float(duration) / STEPS, tuple(names))


def run_profile(ctx: WorkloadContext) -> dict[str, Any]:
    """The ``simulate`` shadow of a kind without a timeline: the previous run when its
    host was given one (``HISTORY_ENV``, ``shadow.source: history``), else the profile."""
    history = os.environ.get(HISTORY_ENV)
    if history:
        profile, duration_s = from_bytes(Path(history).read_bytes())
        out = play_curve(ctx, shadow_curve(profile, duration_s, ctx.fraction, shadow_min_step_s()))
        out["simulated"] = "history"
        return out
    out = play_curve(ctx, profile_curve(ctx))
    out["simulated"] = "profile"
    return out
