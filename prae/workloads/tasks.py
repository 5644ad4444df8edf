"""Built-in ``tasks``: a Ray-native batch job whose tasks run *in* its PRAE reservation.

The job is a sequence of stages, ``params.stages = "1x20,3x25,2x20"``: stage ``k`` runs ``n``
parallel lanes for ``s`` seconds of work each, as Ray tasks of ``task_s`` seconds (the lane's
next task starts when its previous one ends); a stage starts when the one before it has
finished (a barrier, as in a map-reduce job). Each task asks Ray for ``task_cpu`` CPUs,
burns that many cores (busy-wait duty cycle) and holds ``task_mem_mb`` of resident memory,
so the demand PRAE sees in telemetry is the demand Ray schedules.

Live: the job joins the cluster (:meth:`WorkloadContext.ray_init`; its task workers carry the
workload's telemetry tag) and submits every task through
:class:`~prae.engine.reservations_use.ReservationPlacer`: into a free bundle of its
reservation if there is one, else outside it (Ray's reactive path). Started outside PRAE it
schedules plainly. The result says how many tasks ran in the reservation and how long tasks
waited between submission and start -- the waiting PRAE exists to remove.

Shadow (sample or simulate): the stage plan played as a resource curve (cores = lanes x
``task_cpu``, memory = lanes x ``task_mem_mb``) at ``fraction`` of the cost (see
:meth:`~prae.workloads.curve.Curve.shadow`), on the shadow's own resources, without Ray: it
reaches every stage first.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from prae.errors import ConfigError
from prae.workloads.context import WorkloadContext
from prae.workloads.curve import Curve, play_curve, shadow_min_step_s

_STAGE = re.compile(r"\s*(\d+)\s*x\s*(\d+(?:\.\d*)?)\s*")
SLICE_S = 0.02


@dataclass(frozen=True)
class Stage:
    lanes: int
    seconds: float


def parse_stages(workload: str, text: str) -> tuple[Stage, ...]:
    """``"1x20,3x25"`` -> (Stage(1, 20.0), Stage(3, 25.0)); a clear error otherwise."""
    stages = []
    for part in str(text).split(","):
        m = _STAGE.fullmatch(part)
        if not m or int(m.group(1)) < 1 or float(m.group(2)) <= 0:
            raise ConfigError(
                f"workload '{workload}'",
                "params.stages",
                f"cannot read stage {part.strip()!r} of {text!r}",
                "write stages as LANESxSECONDS separated by commas, e.g. '1x20,3x25,2x20' (lanes >= 1, seconds > 0)",
            )
        stages.append(Stage(int(m.group(1)), float(m.group(2))))
    return tuple(stages)


def stage_curve(params: Mapping[str, Any], stages: tuple[Stage, ...]) -> Curve:
    """The plan as a 1-s resource curve: what the live job would use if nothing waited."""
    cpu, mem, names = [], [], []
    for k, st in enumerate(stages):
        n = max(1, math.ceil(st.seconds))
        cpu += [st.lanes * float(params["task_cpu"])] * n
        mem += [st.lanes * float(params["task_mem_mb"]) * 1024**2] * n
        names += [f"stage{k}"] * n
    zeros = np.zeros(len(cpu))
    return Curve(np.array(cpu), np.array(mem), zeros, zeros.copy(), 1.0, tuple(names))


def burn(seconds: float, cores: float, mem_bytes: int) -> float:
    """Use ``cores`` (<= 1) of CPU for ``seconds`` with ``mem_bytes`` resident; returns the
    wall time the call started (to measure how long the task waited to be scheduled)."""
    started = time.time()
    block = bytearray(max(0, mem_bytes))
    block[::4096] = b"\1" * len(range(0, len(block), 4096))  # touch every page: resident
    duty = min(1.0, max(0.0, cores))
    end = time.perf_counter() + seconds
    while (now := time.perf_counter()) < end:
        busy_until = now + duty * SLICE_S
        while time.perf_counter() < busy_until:
            pass
        rest = now + SLICE_S - time.perf_counter()
        if rest > 0 and duty < 1.0:
            time.sleep(rest)
    del block
    return started


def run(ctx: WorkloadContext) -> dict[str, Any]:
    stages = parse_stages(ctx.name, ctx.params["stages"])
    if ctx.is_shadow:
        out = play_curve(ctx, stage_curve(ctx.params, stages).shadow(ctx.fraction, shadow_min_step_s()))
        out["stages"] = len(stages)
        return out
    return _run_live(ctx, stages)


def _run_live(ctx: WorkloadContext, stages: tuple[Stage, ...]) -> dict[str, Any]:
    import ray

    from prae.engine.reservations_use import ReservationPlacer

    p = ctx.params
    task_cpu, task_s = float(p["task_cpu"]), float(p["task_s"])
    mem_bytes = int(float(p["task_mem_mb"]) * 1024**2)  # held, not asked of Ray: tasks ask for CPUs
    ctx.ray_init()
    placer = ReservationPlacer.from_env(refresh_s=0.5)
    task = ray.remote(max_retries=0)(burn)

    def submit(seconds: float) -> Any:
        if placer is None:
            return task.options(num_cpus=task_cpu).remote(seconds, task_cpu, mem_bytes)
        return placer.submit(task, seconds, task_cpu, mem_bytes, num_cpus=task_cpu)

    total = sum(st.lanes * st.seconds for st in stages)
    done = [0.0]  # task-seconds finished
    waits: list[float] = []
    started = time.perf_counter()
    recover = placer.recover if placer is not None else list
    try:
        for k, st in enumerate(stages):
            waits += _run_stage(
                ray, submit, st, task_s, lambda s, ph=f"stage{k}": _progress(ctx, done, s, total, ph), recover
            )
        ctx.report_progress(1.0, f"stage{len(stages) - 1}")
    finally:
        ray.shutdown()
    return {
        "stages": len(stages),
        "tasks": len(waits),
        "seconds": time.perf_counter() - started,
        "in_reservation": placer.placed if placer else 0,
        "outside_reservation": placer.overflow if placer else len(waits),
        "recovered": placer.recovered if placer else 0,
        "wait_s_total": float(sum(waits)),
        "wait_s_max": float(max(waits, default=0.0)),
    }


def _progress(ctx: WorkloadContext, done: list[float], seconds: float, total: float, phase: str) -> None:
    done[0] += seconds
    ctx.report_progress(done[0] / total, phase)


def _run_stage(
    ray: Any,
    submit: Callable[[float], Any],
    stage: Stage,
    task_s: float,
    finished: Callable[[float], None],
    recover: Callable[[], list[tuple[Any, Any]]] = list,
) -> list[float]:
    """All lanes of one stage to the end; returns each task's wait (submission to start).

    ``submit(seconds)`` starts one task and returns its ref; ``finished(seconds)`` is told
    each task's work as it completes (progress); ``recover()`` gives ``(old, new)`` refs
    of tasks stranded in a removed group and submitted again
    (:meth:`ReservationPlacer.recover`)."""
    left = {lane: stage.seconds for lane in range(stage.lanes)}  # work still to submit per lane
    running: dict[Any, tuple[int, float, float]] = {}  # ref -> (lane, seconds, submitted at)
    waits: list[float] = []

    def next_task(lane: int) -> None:
        seconds = min(task_s, left[lane])
        left[lane] -= seconds
        running[submit(seconds)] = (lane, seconds, time.time())

    finished(0.0)
    for lane in left:
        next_task(lane)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
        for old, new in recover():  # its wait counts from the first submission
            running[new] = running.pop(old)
        for ref in ready:
            lane, seconds, submitted = running.pop(ref)
            waits.append(max(0.0, ray.get(ref) - submitted))
            finished(seconds)
            if left[lane] > 1e-9:
                next_task(lane)
    return waits
