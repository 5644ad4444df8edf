"""Does the shadow help? Forecast error with and without shadow features, and what it costs.

1. Collect: each built-in workload runs here for real, live and its shadow together (as the
   engine starts them), in two variants of different size or input (A and B), so that what
   a model learns on one variant does not tell it the other's timing. The live run is sampled
   every ``--interval`` s; its shadow every ``--shadow-interval`` s (its timeline is compressed
   by ~1/fraction, so it is sampled faster; the engine should do the same).
   ``--history-shadows etl,train``: those kinds are then run again with a
   ``simulate`` shadow from history (``prae.workloads.history``) that plays a sample-mode
   live run: the other variant's (``--history-from other``: the job's input changed) or
   its own (``same``: the job recurs as it was); these runs are the ones scored for them.
2. Align: the shadow's telemetry over the progress the live run will cover in its sample
   ``H`` steps later (``align_shadow_by_progress``: the mean of the shadow's samples over that
   span; causal: a live step only sees shadow samples taken by then).
3. Fine-tune ``Predictor.builtin()`` into two arms, identically (same windows, epochs and
   seeds) except that one sees a shadow channel and the other does not: first on real
   Bitbrains VMs (``--trace-series``; the "with" arm gets a synthetic shadow made from each
   series' own future, at reduced amplitude and with noise, since the pretrained model never
   saw a shadow), then on the workload runs: train on variant A runs and test on variant B
   runs, then the reverse (2 folds).
4. The point forecast, as the engine makes it (``chosen_points``): per horizon, the
   model's median, the last value or -- in the "with" arm -- ``shadow_change`` (the last
   value moved as the aligned shadow moved) or ``shadow_level`` (the aligned shadow in
   live units), whichever has had the smallest error so far (``MedianSelector``), starting
   from what the same job's previous run taught it, as the engine carries it
   (``ChoiceRecord``): the other variant's run, forecast by the model before it was
   fine-tuned on that run (``--no-carried-choice``: from nothing; ``choice_not_carried``
   reports that too). The model's own medians are reported too.
5. Score the point forecast at every horizon 1..H of every test step:
   error = |forecast - actual| / (the run's mean of that resource), averaged over the
   resources the workload uses (mean above ``USED_FLOOR``). ``err_all_*`` averages all forecasts;
   ``err_phase_*`` only those whose target step lies within 1 step of a phase change: a
   change of the phase the workload reports, or a shift of a resource's 3-step rolling median
   by more than half its run mean.
   shadow_cost_ratio = shadow CPU-seconds / live CPU-seconds (memory-byte-seconds reported too),
   and per kind a fit of shadow CPU-s = start-up + marginal x live CPU-s (``cost_fit``).
   Shadows of built-ins are forked, as the engine forks them, from fork servers of this
   collection's own (``prae.workloads.forkserver``): the first shadow of each kind pays the
   server's imports, and ``fork_server_cpu_s`` (the servers' CPU, charged to the shadows) is
   inside shadow_cost_ratio. ``--no-fork-server``: every shadow a fresh interpreter.
   ``noise_floor``: the same errors for an oracle that knows each target's 3-step median
   (what sample noise leaves to any forecaster of the phase level).

The last line printed is JSON. Runs are cached in ``--out`` (``--reuse`` re-scores them).

    .venv/bin/python bench/shadow_ablation.py                 # ~15 min on 2 cores
    .venv/bin/python bench/shadow_ablation.py --reuse         # re-score cached runs
    .venv/bin/python bench/shadow_ablation.py --recollect train   # redo one kind's runs
    .venv/bin/python bench/shadow_ablation.py --long-runs --out out/shadow_ablation_long
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prae.config import ShadowSpec, WorkloadSpec  # noqa: E402
from prae.model.combination import CANDIDATES, MedianSelector, level_ratio, point_candidates  # noqa: E402
from prae.model.history import history_track  # noqa: E402
from prae.telemetry.alignment import align_shadow_by_progress  # noqa: E402
from prae.workloads import forkserver  # noqa: E402
from prae.workloads.curve import SAMPLE_INTERVAL_ENV  # noqa: E402
from prae.workloads.history import from_samples  # noqa: E402
from prae.workloads.process import WorkloadProcess  # noqa: E402
from prae.workloads.simulate import HISTORY_ENV  # noqa: E402

# (kind, shadow mode, variant A params, variant B params)
WORKLOADS: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    (
        "etl",
        "sample",
        {"rows": 5_000_000, "partitions": 10, "customers": 100_000, "skew": 1.3},
        {"rows": 7_000_000, "partitions": 16, "customers": 200_000, "skew": 1.6},
    ),
    (
        "train",
        "sample",
        {"samples": 150_000, "epochs": 4, "hidden": 256},
        {"samples": 100_000, "epochs": 6, "hidden": 384},
    ),
    (
        "replay",
        "simulate",
        {"trace": "bitbrains:41", "start": 3510, "steps": 100, "step_s": 0.5},
        {"trace": "bitbrains:52", "start": 6690, "steps": 100, "step_s": 0.5},
    ),
    (
        "service",
        "sample",
        {"pattern": "bitbrains:52", "start": 6690, "steps": 100, "step_s": 0.5, "rps_max": 120.0},
        {"pattern": "bitbrains:45", "start": 4320, "steps": 100, "step_s": 0.5, "rps_max": 120.0},
    ),
]


# --long-runs: train and ETL runs ~4x longer (36-64 s live instead of 5-25 s; their default
# runs give a 5 % shadow 5-30 samples). Measured: the reduction at phase changes was -11.6 %
# and -16.9 % in two collections, against -19.0 % with the default sizes (README): the
# longer runs weigh more, and the ETL's shadow does not foreshadow its changes.
LONG_RUNS = {
    ("etl", "A"): {"rows": 15_000_000, "customers": 300_000},
    ("etl", "B"): {"rows": 21_000_000, "customers": 600_000},
    ("train", "A"): {"samples": 600_000, "epochs": 8},
    ("train", "B"): {"samples": 300_000, "epochs": 10},
}

# --quick: the same pipeline on tiny runs (a smoke test of the harness, not a measurement).
QUICK = {
    "etl": {"rows": 150_000, "partitions": 4, "customers": 10_000},
    "train": {"samples": 6_000, "epochs": 2, "hidden": 64},
    "replay": {"steps": 20},
    "service": {"steps": 20, "rps_max": 60.0},
}


@dataclass
class Run:
    kind: str
    variant: str
    live_ts: list[float]
    live: list[list[float]]  # (T, 4)
    live_progress: list[float]
    live_phase: list[str]
    shadow_ts: list[float]
    shadow: list[list[float]]  # (S, 4)
    shadow_progress: list[float]
    live_cpu_s: float
    shadow_cpu_s: float
    live_mem_bs: float
    shadow_mem_bs: float
    live_exit: int | None
    shadow_exit: int | None
    shadow_mode: str = "sample"  # "history:other" / "history:same": which run its shadow played
    # fork-server CPU charged to the shadow (in shadow_cpu_s; the first shadow of a kind
    # in a collection pays the server's imports), and whether it was forked at all
    shadow_fork_charge_s: float = 0.0
    shadow_forked: bool = False


def history_of(run: Run) -> bytes:
    """A run's live telemetry as the previous run a history shadow plays."""
    found = from_samples(np.array(run.live_ts), np.array(run.live_progress, dtype=float), np.array(run.live))
    if found is None:
        raise SystemExit(f"{run.kind}/{run.variant}: its live run never reached progress 1: no history")
    return found


def collect(
    kind: str,
    mode: str,
    variant: str,
    params: dict[str, Any],
    args: argparse.Namespace,
    history: bytes | None = None,
) -> Run:
    source = "history" if history is not None else "profile"
    spec = WorkloadSpec(
        name=f"abl-{kind}-{variant}" + ("-history" if history is not None else ""),
        kind=kind,  # type: ignore[arg-type]
        params=params,
        shadow=ShadowSpec(mode="simulate" if history is not None else mode, fraction=args.fraction, source=source),  # type: ignore[arg-type]
    )
    root = Path(args.out) / "work" / spec.name
    env = {
        SAMPLE_INTERVAL_ENV: str(args.shadow_interval),
        # This collection's own fork servers: the first shadow of each kind pays the imports.
        forkserver.DIR_ENV: args.fork_dir,
        forkserver.IDLE_ENV: "60",
    }
    if args.no_fork_server:
        env[forkserver.ENABLE_ENV] = "0"
    if history is not None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "history.npz").write_bytes(history)
        env[HISTORY_ENV] = str((root / "history.npz").resolve())
    live = WorkloadProcess(spec, "live", root / "live", seed=args.seed)
    shadow = WorkloadProcess(spec, "shadow", root / "shadow", seed=args.seed, env=env)
    live.start()
    shadow.start()
    ls, ss = [], []
    next_live = time.monotonic() + args.interval
    deadline = time.monotonic() + args.max_run_s
    try:
        while time.monotonic() < deadline:
            if shadow.exit_code() is None or not ss or ss[-1].mem > 0:
                ss.append(shadow.sample())
            if time.monotonic() >= next_live:
                ls.append(live.sample())
                next_live += args.interval
                if live.exit_code() is not None:
                    break
            time.sleep(max(0.0, min(args.shadow_interval, next_live - time.monotonic())))
    finally:
        live.stop(grace_s=2.0)
        shadow.stop(grace_s=2.0)
    return Run(
        kind,
        variant,
        [s.ts for s in ls],
        [s.as_array().tolist() for s in ls],
        [s.progress for s in ls],
        [s.phase for s in ls],
        [s.ts for s in ss],
        [s.as_array().tolist() for s in ss],
        [s.progress for s in ss],
        live.cost_cpu_seconds,
        shadow.cost_cpu_seconds,
        live.cost_mem_byte_seconds,
        shadow.cost_mem_byte_seconds,
        live.exit_code(),
        shadow.exit_code(),
        "sample" if history is None else f"history:{args.history_from}",
        shadow.fork_charge_cpu_s,
        shadow.forked,
    )


# ----------------------------------------------------------------------------- scoring


def aligned_shadow(run: Run, lead: int) -> np.ndarray:
    if not run.shadow:
        return np.full((len(run.live), 4), np.nan)
    return align_shadow_by_progress(
        np.array(run.live_progress, dtype=float),
        np.array(run.shadow_progress, dtype=float),
        np.array(run.shadow, dtype=float),
        lead,
        live_ts=np.array(run.live_ts),
        shadow_ts=np.array(run.shadow_ts),
    )


def change_points(run: Run, scale: np.ndarray) -> np.ndarray:
    """Steps where the reported phase changes or a resource's 3-step median shifts > 0.5 × mean."""
    y = np.array(run.live, dtype=float)
    t = len(y)
    flags = np.zeros(t, dtype=bool)
    for i in range(1, t):
        if run.live_phase[i] and run.live_phase[i] != run.live_phase[i - 1]:
            flags[i] = True
    med = np.array([np.median(y[max(0, i - 1) : i + 2], axis=0) for i in range(t)])
    used = scale > 0
    jump = np.abs(np.diff(med, axis=0))[:, used] > 0.5 * scale[used]
    flags[1:] |= jump.any(axis=1)
    return np.flatnonzero(flags)


def windows_for(
    run: Run, w: int, h: int, use_shadow: bool, t0: int
) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    y = np.array(run.live, dtype=np.float32)
    sh = aligned_shadow(run, h).astype(np.float32)
    lives, shadows, steps = [], [], []
    for t in range(t0, len(y) - h):
        lo = max(0, t - w + 1)
        pad = w - (t + 1 - lo)
        block = np.vstack([np.full((pad, 4), np.nan, np.float32), y[lo : t + 1]])
        sblock = np.vstack([np.full((pad, 4), np.nan, np.float32), sh[lo : t + 1]])
        lives.append(block)
        shadows.append(sblock)
        steps.append(t)
    if not lives:
        return np.zeros((0, w, 4), np.float32), None, []
    return np.stack(lives), (np.stack(shadows) if use_shadow else None), steps


# A resource counts as used by a run whose mean is above this (cpu cores, mem bytes, disk
# and net bytes/s). Per resource: a threshold relative to the largest mean across
# resources (as before) compared cores with bytes and dropped the ETL's CPU.
USED_FLOOR = np.array([0.01, 1e6, 1e3, 1e3])


def score(
    pred_q50: np.ndarray, run: Run, steps: list[int], h: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per (forecast, horizon) errors (N, H) and whether each target is near a phase change."""
    y = np.array(run.live, dtype=float)
    scale = y.mean(axis=0)
    used = scale > USED_FLOOR
    near = np.zeros(len(y), dtype=bool)
    for c in change_points(run, np.where(used, scale, 0.0)):
        near[max(0, c - 1) : c + 2] = True
    errs = np.zeros((len(steps), h))
    flags = np.zeros((len(steps), h), dtype=bool)
    for i, t in enumerate(steps):
        for k in range(h):
            target = y[t + 1 + k]
            e = np.abs(pred_q50[i, k] - target)[used] / scale[used]
            errs[i, k] = float(np.mean(e))
            flags[i, k] = near[t + 1 + k]
    return errs, flags


def chosen_points(
    q50: np.ndarray,
    run: Run,
    steps: list[int],
    h: int,
    with_shadow: bool,
    half_life: float,
    selectors: list[MedianSelector] | None = None,
) -> np.ndarray:
    """The engine's point forecast (N, H, R): per horizon, ``MedianSelector`` weighs the
    model's median, the last value, the run's own history's candidates (``history_track``)
    and (with a shadow) ``shadow_change`` and ``shadow_level``, by the errors of this run's
    forecasts resolved so far (steps are consecutive: the forecast issued at
    ``steps[i - k]`` for horizon k resolves at ``steps[i]``). ``selectors`` (one per
    horizon, from ``carried_choice``): what the workload's previous run taught them, as the
    engine carries it from run to run; they go on learning here."""
    y = np.array(run.live, dtype=float)
    last = np.broadcast_to(y[steps][:, None, :], q50.shape)  # (N, H, R)
    # as the engine's tracker: the samples are the steps (runs shorter than the periodic
    # candidate's history get none of the seasonal ones; the analog needs lead + 21 samples)
    step_s = float(np.median(np.diff(run.live_ts))) if len(run.live_ts) > 1 else 1.0
    history = np.stack([history_track(y, k, step_s).candidates[steps] for k in range(1, h + 1)], axis=1)
    if with_shadow:
        now_all = aligned_shadow(run, 0)
        now = now_all[steps][:, None, :]
        ahead = np.stack([aligned_shadow(run, k)[steps] for k in range(1, h + 1)], axis=1)
        ratio = np.stack([level_ratio(y[: t + 1], now_all[: t + 1]) for t in steps])[:, None, :]
        cand = point_candidates(q50, last, np.broadcast_to(now, q50.shape), ahead, ratio, history=history)
    else:
        cand = point_candidates(q50, last, history=history)
    n_c = cand.shape[-1]
    out = np.empty(q50.shape)
    one = np.zeros(1, np.int64)
    for k in range(1, h + 1):
        if selectors is None:
            sel = MedianSelector(1, y.shape[1], half_life=half_life, n_candidates=n_c)
        else:
            sel = selectors[k - 1]
        for i, t in enumerate(steps):
            if i >= k:
                sel.update(one, cand[i - k, k - 1][None], y[t][None])
            out[i, k - 1] = sel.select(one, cand[i, k - 1][None])[0]
    return out


def carried_choice(
    model: Any, prev: Run, h: int, t0: int, shadow_input: bool, with_shadow: bool, half_life: float
) -> list[MedianSelector]:
    """The per-horizon choices after the workload's previous run ``prev``, forecast by
    ``model`` as it was then (before it was fine-tuned on that run): what the engine carries
    into the next run of a workload (``ChoiceRecord``)."""
    live, shadow, steps = windows_for(prev, model.window_steps, h, shadow_input, t0)
    n_c = len(CANDIDATES) if with_shadow else len(CANDIDATES) - 2  # point_candidates' columns
    n_r = len(prev.live[0])
    selectors = [MedianSelector(1, n_r, half_life=half_life, n_candidates=n_c) for _ in range(h)]
    if steps:
        q50 = model.predict(live, shadow)[..., list(model.quantiles).index(0.5)]
        chosen_points(q50, prev, steps, h, with_shadow, half_life, selectors)
    return selectors


def synthetic_shadow(
    y: np.ndarray, lead: int, rng: np.random.Generator, noise: float = 0.3
) -> np.ndarray:
    """What an aligned shadow looks like, made from a trace's own future: row t holds the
    series at t + lead, at a reduced amplitude (a factor in 0.05..1 per resource), with
    multiplicative noise (sigma ``noise`` in log space), unknown for a random first stretch and
    beyond the end. Teaches the model what the shadow channel means."""
    n = len(y)
    out = np.full_like(y, np.nan)
    out[: n - lead] = y[lead:]
    out *= rng.uniform(0.05, 1.0, size=(1, y.shape[1]))
    out *= np.exp(rng.normal(0.0, noise, size=out.shape))
    out[: rng.integers(0, max(1, n // 10))] = np.nan
    return out.astype(np.float32)


def trace_windows(args: argparse.Namespace, w: int, h: int, with_shadow: bool) -> Any:
    """Windows from real Bitbrains VMs, with a synthetic shadow channel or without one."""
    from prae.model.training import concat_windows, windows_from_series
    from prae.traces import load_trace
    from prae.workloads.tracesrc import traces_dir

    rng = np.random.default_rng(args.seed)
    folder = traces_dir() / "bitbrains-rnd-2013-07" / "series"
    items = []
    for vm in range(1, args.trace_series + 1):
        path = folder / f"{vm}.csv.gz"
        if not path.exists():
            continue
        y = load_trace(path, "bitbrains")[0].values.astype(np.float32)
        shadow = synthetic_shadow(y, h, rng, args.synthetic_noise) if with_shadow else None
        items.append(windows_from_series(y, shadow, w, h, stride=4))
    return concat_windows(items)


def shadow_signal(runs: list[Run], lead: int) -> dict[str, dict[str, float]]:
    """Model-free: Pearson correlation, per kind and resource, between the live value at
    t + lead and the shadow aligned at t for that lead (where both are known and vary)."""
    out: dict[str, dict[str, float]] = {}
    for kind in sorted({r.kind for r in runs}):
        xs: dict[int, list[float]] = {i: [] for i in range(4)}
        ys: dict[int, list[float]] = {i: [] for i in range(4)}
        for r in (r for r in runs if r.kind == kind):
            y = np.array(r.live, dtype=float)
            al = aligned_shadow(r, lead)
            for i in range(4):
                a, b = al[: len(y) - lead, i], y[lead:, i]
                ok = np.isfinite(a) & np.isfinite(b)
                # per run, standardised, so runs of different size pool
                if ok.sum() > 3 and a[ok].std() > 0 and b[ok].std() > 0:
                    xs[i].extend((a[ok] - a[ok].mean()) / a[ok].std())
                    ys[i].extend((b[ok] - b[ok].mean()) / b[ok].std())
        out[kind] = {
            name: (round(float(np.corrcoef(xs[i], ys[i])[0, 1]), 3) if len(xs[i]) > 3 else math.nan)
            for i, name in enumerate(("cpu", "mem", "disk", "net"))
        }
    return out


def evaluate(runs: list[Run], args: argparse.Namespace) -> dict[str, Any]:
    from prae.model.predictor import Predictor
    from prae.model.training import concat_windows, fit, windows_from_series

    builtin = Predictor.builtin()
    w, h = builtin.window_steps, builtin.horizon_steps
    # Both arms first learn from the same real traces, one with a shadow channel, one without:
    # four workload runs alone are too little to learn what a new input means.
    bases = {"builtin": builtin}
    for arm in ("with", "without"):
        model = copy.deepcopy(builtin)
        if args.trace_series > 0:
            t = time.monotonic()
            stats = fit(
                model,
                trace_windows(args, w, h, arm == "with"),
                epochs=1,
                lr=args.lr,
                seed=args.seed,
                batch_size=256,
                samples_per_epoch=args.trace_samples,
                val_fraction=0.0,
            )
            print(
                f"trace pre-fine-tune ({arm}): loss {stats['loss']:.4f}, {time.monotonic() - t:.0f} s",
                flush=True,
            )
        bases[arm] = model
    results: dict[str, dict[str, list[np.ndarray]]] = {}
    folds = [("A", "B"), ("B", "A")]
    arms = ("with", "without", "builtin")
    for arm in arms:
        results[arm] = {"err": [], "phase": [], "kind": []}
        results[f"{arm}_model"] = {"err": [], "phase": [], "kind": []}
        results[f"{arm}_cold"] = {"err": [], "phase": [], "kind": []}
    results["candidate_only"] = {"err": [], "phase": [], "kind": []}
    for train_v, test_v in folds:
        train_runs = [r for r in runs if r.variant == train_v]
        test_runs = [r for r in runs if r.variant == test_v]
        for arm in ("with", "without", "builtin"):
            errs_seeds = []
            for fit_seed in range(args.fit_seeds):
                model = copy.deepcopy(bases[arm])
                if arm != "builtin":
                    # Left-padded with NaN, as the engine's windows are early in a run, so that
                    # a short run still gives one training window per step.
                    pad = np.full((w - args.t0, 4), np.nan, np.float32)
                    wins = [
                        windows_from_series(
                            np.vstack([pad, np.array(r.live, dtype=np.float32)]),
                            np.vstack([pad, aligned_shadow(r, h).astype(np.float32)])
                            if arm == "with"
                            else None,
                            w,
                            h,
                        )
                        for r in train_runs
                    ]
                    fit(
                        model,
                        concat_windows(wins),
                        epochs=args.epochs,
                        lr=args.lr,
                        seed=fit_seed,
                        batch_size=64,
                        val_fraction=0.0,
                    )
                per_run = []
                for r in test_runs:
                    live, shadow, steps = windows_for(r, w, h, arm == "with", args.t0)
                    if not steps:
                        continue
                    q50 = model.predict(live, shadow)[..., list(model.quantiles).index(0.5)]
                    hl = args.median_half_life
                    # The same job's previous run: this kind's run of the other variant,
                    # forecast by the model before it was fine-tuned on it.
                    prev = next(x for x in train_runs if x.kind == r.kind)

                    def carried(
                        with_shadow: bool, prev: Run = prev, arm: str = arm, hl: float = hl
                    ) -> list[MedianSelector] | None:
                        if args.no_carried_choice:
                            return None
                        return carried_choice(bases[arm], prev, h, args.t0, arm == "with", with_shadow, hl)

                    point = chosen_points(q50, r, steps, h, arm == "with", hl, carried(arm == "with"))
                    cold = chosen_points(q50, r, steps, h, arm == "with", hl)
                    scored = [score(point, r, steps, h), score(q50, r, steps, h), score(cold, r, steps, h)]
                    if arm == "without":  # the shadow only as a candidate, not as model input
                        alt = chosen_points(q50, r, steps, h, True, hl, carried(True))
                        scored.append(score(alt, r, steps, h))
                    per_run.append((r, *scored))
                errs_seeds.append(per_run)
            # average the fit seeds forecast by forecast
            for j, (r, (_e0, f0), *_) in enumerate(errs_seeds[0]):
                keys = [(arm, 1), (f"{arm}_model", 2), (f"{arm}_cold", 3)]
                if arm == "without":
                    keys.append(("candidate_only", 4))
                for key, which in keys:
                    e = np.mean([seed_runs[j][which][0] for seed_runs in errs_seeds], axis=0)
                    results[key]["err"].append(e)
                    results[key]["phase"].append(f0)
                    results[key]["kind"].append(np.full(e.shape, r.kind, dtype=object))

    def summarise(
        arm: str, kind: str | None = None, horizon: int | None = None
    ) -> tuple[float, float]:
        e = np.concatenate(
            [x.ravel() if horizon is None else x[:, horizon - 1] for x in results[arm]["err"]]
        )
        f = np.concatenate(
            [x.ravel() if horizon is None else x[:, horizon - 1] for x in results[arm]["phase"]]
        )
        k = np.concatenate(
            [x.ravel() if horizon is None else x[:, horizon - 1] for x in results[arm]["kind"]]
        )
        sel = np.ones_like(f) if kind is None else (k == kind)
        all_e = float(np.mean(e[sel])) if sel.any() else math.nan
        ph = sel & f
        return (float(np.mean(e[ph])) if ph.any() else math.nan), all_e

    out: dict[str, Any] = {}
    (out["err_phase_with"], out["err_all_with"]) = summarise("with")
    (out["err_phase_without"], out["err_all_without"]) = summarise("without")
    (out["err_phase_builtin_no_finetune"], out["err_all_builtin_no_finetune"]) = summarise(
        "builtin"
    )
    out["phase_error_reduction"] = 1.0 - out["err_phase_with"] / out["err_phase_without"]
    # The LSTM's own medians, before the engine's per-workload choice of the point forecast.
    model_only = {}
    for arm in ("with", "without"):
        (model_only[f"err_phase_{arm}"], model_only[f"err_all_{arm}"]) = summarise(f"{arm}_model")
    out["model_median_only"] = model_only
    # Each run's choice started from nothing (the model's median for its first outcomes),
    # as before the choice was carried from a workload's previous run.
    cold = {}
    for arm in ("with", "without"):
        (cold[f"err_phase_{arm}"], cold[f"err_all_{arm}"]) = summarise(f"{arm}_cold")
    cold["phase_error_reduction"] = 1.0 - cold["err_phase_with"] / cold["err_phase_without"]
    out["choice_not_carried"] = cold
    # The model without the shadow channel, the shadow only as the shadow_change candidate.
    (out["err_phase_shadow_candidate_only"], out["err_all_shadow_candidate_only"]) = summarise(
        "candidate_only"
    )
    out["all_error_reduction"] = 1.0 - out["err_all_with"] / out["err_all_without"]
    per_kind = {}
    for kind in sorted({r.kind for r in runs}):
        pw, aw = summarise("with", kind)
        po, ao = summarise("without", kind)
        mw, _ = summarise("with_model", kind)
        mo, _ = summarise("without_model", kind)
        pc, _ = summarise("candidate_only", kind)
        per_kind[kind] = {
            "phase_with": pw,
            "phase_without": po,
            "all_with": aw,
            "all_without": ao,
            "phase_with_model_only": mw,
            "phase_without_model_only": mo,
            "phase_shadow_candidate_only": pc,
        }
    out["per_kind"] = per_kind
    lead = min(args.lead, h)
    pw, aw = summarise("with", horizon=lead)
    po, ao = summarise("without", horizon=lead)
    out[f"at_horizon_{lead}"] = {
        "phase_with": pw,
        "phase_without": po,
        "all_with": aw,
        "all_without": ao,
    }
    n_phase = int(sum(f.sum() for f in results["with"]["phase"]))
    n_all = int(sum(f.size for f in results["with"]["phase"]))
    out["n_forecast_targets"] = {"all": n_all, "phase": n_phase}
    out["noise_floor"] = noise_floor(runs, h, args.t0)
    return out


def noise_floor(runs: list[Run], h: int, t0: int) -> dict[str, float]:
    """What no forecaster of a workload's phases can remove: the errors of an oracle that
    knows the future and forecasts each target by its own 3-step centred median (the
    sample-to-sample noise around the level), scored like the arms, over all runs."""
    e_all, f_all = [], []
    for r in runs:
        y = np.array(r.live, dtype=float)
        steps = list(range(t0, len(y) - h))
        if not steps:
            continue
        smooth = np.array([np.median(y[max(0, i - 1) : i + 2], axis=0) for i in range(len(y))])
        pred = np.stack([smooth[t + 1 : t + 1 + h] for t in steps])
        e, f = score(pred, r, steps, h)
        e_all.append(e.ravel())
        f_all.append(f.ravel())
    e, f = np.concatenate(e_all), np.concatenate(f_all)
    return {"err_phase": float(e[f].mean()), "err_all": float(e.mean())}


def cost_fit(runs: list[Run]) -> dict[str, dict[str, float]]:
    """Per kind, shadow CPU-s = start-up + marginal × live CPU-s, fitted over its runs
    (variants A and B differ in size): the start-up (interpreter, imports, generating
    inputs) is paid once per run, so the ratio falls towards ``marginal`` as runs get
    longer than these benchmark runs of 15-45 CPU-s."""
    out = {}
    for kind in sorted({r.kind for r in runs}):
        pts = [(r.live_cpu_s, r.shadow_cpu_s) for r in runs if r.kind == kind]
        live = np.array([p[0] for p in pts])
        if len(pts) < 2 or np.ptp(live) < 1.0:
            continue
        marginal, startup = np.polyfit(live, np.array([p[1] for p in pts]), 1)
        out[kind] = {"startup_cpu_s": round(float(startup), 2), "marginal": round(float(marginal), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="out/shadow_ablation")
    ap.add_argument("--reuse", action="store_true", help="score the runs cached in --out")
    ap.add_argument(
        "--recollect", default="", help="with the cache: run these kinds again (e.g. train)"
    )
    ap.add_argument("--kinds", default="etl,train,replay,service")
    ap.add_argument(
        "--history-shadows",
        default="",
        help="kinds whose shadow is 'simulate' from history: a live run collected in sample "
        "mode first, played ahead; '' for their sample shadows",
    )
    ap.add_argument(
        "--history-from",
        choices=("other", "same"),
        default="other",
        help="the history shadow plays the other variant's run (the job's input changed: "
        "other size, epochs, partitions) or the same variant's earlier run (a job that recurs as it was)",
    )
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--interval", type=float, default=0.5, help="live sampling step (s)")
    ap.add_argument("--shadow-interval", type=float, default=0.1, help="shadow sampling step (s)")
    ap.add_argument("--max-run-s", type=float, default=300.0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--fit-seeds", type=int, default=2)
    ap.add_argument("--t0", type=int, default=4, help="first live step forecast from")
    ap.add_argument("--lead", type=int, default=5, help="also report errors at this horizon")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--median-half-life",
        type=float,
        default=288.0,
        help="the point-forecast choice's memory in outcomes (the engine's default)",
    )
    ap.add_argument(
        "--no-carried-choice",
        action="store_true",
        help="start each run's point-forecast choice from nothing, not from the job's previous run",
    )
    ap.add_argument(
        "--trace-series", type=int, default=80, help="Bitbrains VMs to pre-fine-tune on (0: none)"
    )
    ap.add_argument("--trace-samples", type=int, default=40_000, help="trace windows drawn for it")
    ap.add_argument(
        "--synthetic-noise",
        type=float,
        default=0.3,
        help="log-space sigma of the synthetic shadow the 'with' arm pre-fine-tunes on",
    )
    ap.add_argument(
        "--no-fork-server",
        action="store_true",
        help="start every shadow as a fresh interpreter (as before the fork server)",
    )
    ap.add_argument(
        "--long-runs", action="store_true", help="train and ETL runs ~4x longer (see LONG_RUNS)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny runs: checks the harness, measures nothing"
    )
    args = ap.parse_args()
    # short: a Unix socket path has at most 107 bytes
    args.fork_dir = tempfile.mkdtemp(prefix="prae-abl-fs-")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "runs.json"
    kinds = set(args.kinds.split(","))
    runs: list[Run] = []
    if (args.reuse or args.recollect) and cache.exists():
        runs = [Run(**r) for r in json.loads(cache.read_text())]
    redo = set(args.recollect.split(",")) if args.recollect else (set() if args.reuse else kinds)
    history_kinds = {k for k in args.history_shadows.split(",") if k}
    history_mode = f"history:{args.history_from}"  # a cached run of the other source is not reused
    runs = [r for r in runs if r.kind not in redo]

    def collect_one(kind: str, mode: str, variant: str, params: dict[str, Any], history: bytes | None) -> None:
        if args.long_runs:
            params = {**params, **LONG_RUNS.get((kind, variant), {})}
        if args.quick:
            params = {**params, **QUICK[kind]}
        t = time.monotonic()
        run = collect(kind, mode, variant, params, args, history)
        runs.append(run)
        print(
            f"{kind}/{variant} ({run.shadow_mode}): {len(run.live)} live samples, {len(run.shadow)} shadow "
            f"samples, exit {run.live_exit}/{run.shadow_exit}, cpu {run.live_cpu_s:.1f}/{run.shadow_cpu_s:.1f} s, "
            f"{time.monotonic() - t:.0f} s",
            flush=True,
        )
        cache.write_text(json.dumps([asdict(r) for r in runs]))

    for kind, mode, pa, pb in WORKLOADS:
        if kind in redo:
            for variant, params in (("A", pa), ("B", pb)):
                collect_one(kind, mode, variant, params, None)
        if kind in history_kinds and kind in kinds:
            # Each variant's shadow plays a sample-mode live run: the other variant's, or its own.
            sampled = {r.variant: r for r in runs if r.kind == kind and r.shadow_mode == "sample"}
            have = {r.variant for r in runs if r.kind == kind and r.shadow_mode == history_mode}
            for variant, params, other in (("A", pa, "B"), ("B", pb, "A")):
                source = variant if args.history_from == "same" else other
                if variant not in have:
                    collect_one(kind, mode, variant, params, history_of(sampled[source]))
    runs = [
        r
        for r in runs
        if r.kind in kinds and r.shadow_mode == (history_mode if r.kind in history_kinds else "sample")
    ]
    bad = [f"{r.kind}/{r.variant}" for r in runs if r.live_exit != 0]
    if bad:
        print(f"warning: live runs that did not finish cleanly: {bad}", flush=True)
    result = evaluate(runs, args)
    result["shadow_live_corr_at_lead"] = shadow_signal(runs, args.lead)
    result["shadow_cost_ratio"] = sum(r.shadow_cpu_s for r in runs) / max(
        1e-9, sum(r.live_cpu_s for r in runs)
    )
    result["shadow_mem_cost_ratio"] = sum(r.shadow_mem_bs for r in runs) / max(
        1e-9, sum(r.live_mem_bs for r in runs)
    )
    result["shadow_cost_ratio_per_kind"] = {
        k: sum(r.shadow_cpu_s for r in runs if r.kind == k)
        / max(1e-9, sum(r.live_cpu_s for r in runs if r.kind == k))
        for k in sorted({r.kind for r in runs})
    }
    result["shadow_cost_fit_per_kind"] = cost_fit(runs)
    result["shadow_forked_runs"] = sum(r.shadow_forked for r in runs)
    result["fork_server_cpu_s"] = round(sum(r.shadow_fork_charge_s for r in runs), 2)
    result["settings"] = {
        "fraction": args.fraction,
        "interval_s": args.interval,
        "shadow_interval_s": args.shadow_interval,
        "epochs": args.epochs,
        "fit_seeds": args.fit_seeds,
        "trace_series": args.trace_series,
        "trace_samples": args.trace_samples,
        "synthetic_noise": args.synthetic_noise,
        "long_runs": args.long_runs,
        "runs": len(runs),
        "shadow_modes": {
            k: (f"simulate (history, {args.history_from} variant)" if k in history_kinds else m)
            for k, m, _, _ in WORKLOADS
            if k in kinds
        },
    }
    print(json.dumps(result))
    # The servers exit 60 s after their last shadow; their socket directory goes now.
    shutil.rmtree(args.fork_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
