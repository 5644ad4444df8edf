"""Replay traces through the live engine's predictor, calibrator and allocation policy.

Online and causal: the forecast issued at step t is computed from rows <= t; the model
is fine-tuned every ``retrain_every_s`` on rows before the retraining time only; the
calibrator learns from a forecast only when its target time has passed; the allocation
policy sees the forecasts issued at t. ``run_backtest`` is a list of named, timed steps:

    align       put all series on one grid (they share a step; starts may differ)
    forecast    block by block: retrain on the past, then batched inference for the block
    point       per series, the median is the model's, the last value's, the seasonal
                candidates' and the analog's (prae.model.history), weighted by their recent
                resolved errors (prae.model.combination); the model's quantiles are moved
                onto it and blended with the analog quantiles (the outcomes of the
                moments of the series' own week most like now)
    calibrate   online conformal adjustment, step by step, vectorised over series
    tail        per series and resource, the levels >= q0.9 are the model's tail, an
                anchor (the last value; cpu's peak of the last hour) plus the series' own
                recent changes from it, and its own recent values' quantiles, weighted by
                their recent pinball losses (network: the best alone; prae.model.tails)
    allocate    the violation-budget policy: one price per resource carried over the
                steps (pooled over workload-steps), or per step across the series alive
    baselines   reactive, max-1h, VPA, Autopilot, seasonal naive, oracle
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from prae.backtest.baselines import all_baselines, last_value, window_max
from prae.model.calibration import ERROR_HALF_LIFE, CalibrationBank
from prae.model.combination import (
    ANALOG_WEIGHT,
    MedianSelector,
    blend_analog,
    centre_on,
    point_candidates,
)
from prae.model.history import HISTORY, HistoryRows, history_track
from prae.model.predictor import Predictor
from prae.model.promotion import Comparison, PromotionRule, compare, judge
from prae.model.tails import (
    ANCHOR_PEAK_S,
    HOUR_PEAK_RESOURCES,
    INCREMENT_WINDOW,
    TAIL_CANDIDATES,
    TAIL_HALF_LIFE,
    TAIL_RESOURCES,
    TailChoice,
    tail_anchor,
)
from prae.model.training import TrainingWindows, concat_windows, fit, split_newest, window_losses
from prae.policy.violation_budget import PooledBudget, allocate_quantiles
from prae.resources import QUANTILES, RESOURCES
from prae.traces.series import Series


@dataclass(frozen=True)
class BacktestConfig:
    lead_s: float = 900.0
    violation_target: float = 0.01
    seed: int = 0
    retrain_every_s: float | None = 86400.0  # None: never retrain (pretrained model only)
    retrain_windows: int = 4096  # windows sampled from the past at each retraining
    retrain_epochs: int = 1
    retrain_lr: float = 3e-4
    # Champion/challenger: a retrained model is used from then on only if it beats the one
    # in use on the newest rows, held out of its training (``prae.model.promotion``).
    promotion: PromotionRule = PromotionRule()
    holdout_windows: int = 2048  # held-out windows sampled to judge on (both models, the same)
    warmup_s: float = 3600.0  # rows are emitted for issue steps after this much history
    calibration_window: int = 200
    calibration_gamma: float = 0.0  # adaptive conformal step; 0 = plain rolling window
    # the normaliser's recent error, in outcomes; None = the forecast's own width
    calibration_error_half_life: float | None = ERROR_HALF_LIFE
    season_s: float = 86400.0
    extra_budgets: tuple[float, ...] = (0.01, 0.05)  # policy also run at these (metrics)
    median_half_life: float | None = 288.0  # MedianSelector memory (outcomes); None: off
    analog: bool = True  # the analog point candidate (prae.model.analogs); the engine's predictor.analog_candidate
    analog_weight: float = ANALOG_WEIGHT  # the analog quantiles' share (combination.blend_analog); 0: off
    tail_resources: tuple[str, ...] = TAIL_RESOURCES  # TailSelector may choose for these; (): off
    tail_half_life: float = TAIL_HALF_LIFE
    increment_window: int = INCREMENT_WINDOW
    pooled_budget: bool = True  # one price over time (PooledBudget); False: per step
    budget_price_rate: float = 0.005  # PooledBudget.rate

    def validate(self, step_s: float, horizon_steps: int) -> int:
        """Lead in steps; ValueError naming the rule otherwise."""
        lead = self.lead_s / step_s
        if lead < 1 or abs(lead - round(lead)) > 1e-9:
            raise ValueError(
                f"--lead-s {self.lead_s:g} must be a positive multiple of the grid step {step_s:g} s"
            )
        if round(lead) > horizon_steps:
            raise ValueError(
                f"--lead-s {self.lead_s:g} is {round(lead)} steps of {step_s:g} s; the model "
                f"forecasts {horizon_steps} steps. Use a lead <= {horizon_steps * step_s:g} s "
                "or a checkpoint with a longer horizon"
            )
        if not 0 < self.violation_target < 1:
            raise ValueError(f"--violation-target must be in (0, 1), got {self.violation_target}")
        if not 0 <= self.analog_weight <= 1:
            raise ValueError(f"--analog-weight must be in [0, 1], got {self.analog_weight}")
        return int(round(lead))


@dataclass(frozen=True)
class Grid:
    """Series on one time grid. y: (S, T, R) with NaN outside each series."""

    series_ids: tuple[str, ...]
    step_s: float
    starts: np.ndarray  # (S,) each series' own start_s
    offsets: np.ndarray  # (S,) grid index of each series' row 0
    lengths: np.ndarray  # (S,)
    y: np.ndarray
    has_resource: np.ndarray  # (S, R) bool: resource observed at least once

    @property
    def n_steps(self) -> int:
        return int(self.y.shape[1])


@dataclass
class BacktestResult:
    config: BacktestConfig
    grid: Grid
    lead_steps: int
    raw: np.ndarray  # (S, T, R, Q) model forecast issued at t for t + lead (NaN = none)
    calibrated: np.ndarray  # (S, T, R, Q); median = the per-series choice (``point``)
    alloc: dict[float, np.ndarray]  # budget -> (S, T, R) PRAE allocation for t + lead
    level: np.ndarray  # (S, T, R) level chosen at the violation target
    baselines: dict[str, np.ndarray]  # name -> (S, T, R) value for t + lead
    versions: list[tuple[float, str]] = field(default_factory=list)  # (from time, version)
    train_log: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def actual(self) -> np.ndarray:
        """(S, T, R): the usage at each row's target time."""
        return self.baselines["oracle"]

    def emitted(self) -> np.ndarray:
        """(S, T, R) bool: rows written to forecasts.parquet -- every issue step after the
        first ``warmup_s`` of a series whose target is inside the series, for each
        resource the series records."""
        g = self.grid
        t = np.arange(g.n_steps)[None, :]
        local = t - g.offsets[:, None]
        warm = int(math.ceil(self.config.warmup_s / g.step_s - 1e-9))
        ok = (local >= warm) & (local + self.lead_steps <= g.lengths[:, None] - 1)
        return ok[:, :, None] & g.has_resource[:, None, :] & ~np.isnan(self.raw[..., 0])

    def scored(self) -> np.ndarray:
        """(S, T, R) bool: emitted rows whose target was observed."""
        return self.emitted() & ~np.isnan(self.actual)


# ---------------------------------------------------------------------------- steps


def align(series: list[Series]) -> Grid:
    if not series:
        raise ValueError("no series to backtest")
    steps = {s.step_s for s in series}
    if len(steps) != 1:
        raise ValueError(f"all series must share one grid step, got {sorted(steps)}")
    step = series[0].step_s
    starts = np.array([s.start_s for s in series], dtype=np.float64)
    origin = starts.min()
    offsets = np.round((starts - origin) / step).astype(np.int64)
    lengths = np.array([len(s) for s in series], dtype=np.int64)
    t = int((offsets + lengths).max())
    y = np.full((len(series), t, len(RESOURCES)), np.nan)
    for i, s in enumerate(series):
        y[i, offsets[i] : offsets[i] + lengths[i]] = s.values
    has = ~np.isnan(y).all(axis=1)
    return Grid(tuple(s.series_id for s in series), step, starts, offsets, lengths, y, has)


def _retrain_windows(
    grid: Grid, model: Predictor, until: int, cfg: BacktestConfig, k: int
) -> tuple[TrainingWindows, TrainingWindows] | None:
    """Windows made only of rows before grid step ``until``, a seeded sample of them to
    train on, and a seeded sample of the held-out ones (targets in each series' newest
    rows, ``cfg.promotion``) to judge the retrained model on."""
    items = []
    for i in range(len(grid.series_ids)):
        n_past = min(int(until - grid.offsets[i]), int(grid.lengths[i]))
        if n_past < model.window_steps + model.horizon_steps:
            continue
        vals = grid.y[i, grid.offsets[i] : grid.offsets[i] + n_past]
        items.append(
            split_newest(
                vals, None, model.window_steps, model.horizon_steps, cfg.promotion.holdout_rows(n_past)
            )
        )
    train = [t for t, _ in items if len(t)]
    if not train:
        return None
    rng = np.random.default_rng([cfg.seed, k])
    w = concat_windows(train)
    take = np.sort(rng.permutation(len(w))[: cfg.retrain_windows])
    train_w = TrainingWindows(w.values, w.shadow, w.starts[take], w.window_steps, w.horizon_steps)
    held = [h for _, h in items if len(h)]
    if not held:
        return train_w, TrainingWindows(w.values, w.shadow, w.starts[:0], w.window_steps, w.horizon_steps)
    h = concat_windows(held)
    take = np.sort(rng.permutation(len(h))[: cfg.holdout_windows])
    return train_w, TrainingWindows(h.values, h.shadow, h.starts[take], h.window_steps, h.horizon_steps)


def forecast(
    grid: Grid, predictor: Predictor, cfg: BacktestConfig, lead: int
) -> tuple[np.ndarray, list[tuple[float, str]], list[dict[str, Any]]]:
    """Model forecasts for every issue step whose target is inside its series.

    Returns raw (S, T, R, Q) float32, the model versions used (from which time), and the
    retraining logs. ``predictor`` is not modified (a copy is fine-tuned).
    """
    model = copy.deepcopy(predictor)
    s_n, t_n, r_n = grid.y.shape
    w = model.window_steps
    raw = np.full((s_n, t_n, r_n, len(QUANTILES)), np.nan, np.float32)
    padded = [
        np.concatenate(
            [
                np.full((w - 1, r_n), np.nan),
                grid.y[i, grid.offsets[i] : grid.offsets[i] + grid.lengths[i]],
            ]
        ).astype(np.float32)
        for i in range(s_n)
    ]
    every = max(1, int(round(cfg.retrain_every_s / grid.step_s))) if cfg.retrain_every_s else t_n
    versions: list[tuple[float, str]] = []
    logs: list[dict[str, Any]] = []
    origin = float(grid.starts.min())
    for k, a in enumerate(range(0, t_n, every)):
        b = min(t_n, a + every)
        if k > 0 and cfg.retrain_every_s:
            t_fit = time.perf_counter()
            split = _retrain_windows(grid, model, a, cfg, k)
            if split is not None:
                tw, hw = split
                challenger = copy.deepcopy(model)
                log = fit(
                    challenger,
                    tw,
                    epochs=cfg.retrain_epochs,
                    lr=cfg.retrain_lr,
                    seed=cfg.seed * 100_003 + k,
                    val_fraction=0.0,
                )
                judged = len(hw) > 0 and not cfg.promotion.always
                verdict = judge(
                    compare(window_losses(model, hw), window_losses(challenger, hw))
                    if judged
                    else Comparison(math.nan, math.nan, math.nan, len(hw)),
                    cfg.promotion,
                )
                if verdict.promote:
                    model = challenger
                log["seconds"] = round(time.perf_counter() - t_fit, 3)
                logs.append({"at_s": origin + a * grid.step_s, **log, **verdict.as_dict()})
        versions.append((origin + a * grid.step_s, model.version))
        chunks, where = [], []
        for i in range(s_n):
            off, n = int(grid.offsets[i]), int(grid.lengths[i])
            lo, hi = max(a - off, 0), min(b - off, n - lead)
            if hi <= lo:
                continue
            win = sliding_window_view(padded[i], w, axis=0)[lo:hi]  # (n, R, W)
            chunks.append(win.transpose(0, 2, 1))
            where.append((i, off + lo, off + hi))
        if not chunks:
            continue
        out = model.predict(np.concatenate(chunks))[:, lead - 1]  # (n, R, Q)
        pos = 0
        for i, t0, t1 in where:
            raw[i, t0:t1] = out[pos : pos + t1 - t0]
            pos += t1 - t0
    return raw, versions, logs


def choose_median(
    grid: Grid, raw: np.ndarray, cfg: BacktestConfig, lead: int, history: np.ndarray | None = None
) -> np.ndarray:
    """Point forecasts (S, T, R): per series, the model's median, the last value and the
    candidates of its own history (``prae.model.history``; ``history`` (S, T, R, H) if
    already found) weighted by their recent resolved errors (``MedianSelector``). At step
    t it learns from the targets that arrived at t (issued at t - lead), then weighs the
    forecasts issued at t."""
    i50 = QUANTILES.index(0.5)
    s_n, t_n, r_n = raw.shape[:3]
    if history is None:
        history = history_grid(grid, lead, analog=cfg.analog).candidates
    cand = point_candidates(raw[..., i50], last_value(grid.y), history=history)
    if cfg.median_half_life is None:
        return cand[..., 0]
    sel = MedianSelector(s_n, r_n, half_life=cfg.median_half_life, n_candidates=cand.shape[-1])
    out = np.full((s_n, t_n, r_n), np.nan)

    def learn(idx: np.ndarray, tt: int, t: int) -> None:
        sel.update(idx, cand[idx, tt], grid.y[idx, t])

    def act(idx: np.ndarray, t: int) -> None:
        out[idx, t] = sel.select(idx, cand[idx, t])

    walk_causally(~np.isnan(raw[..., 0, 0]), lead, learn, act)
    return out


def history_grid(grid: Grid, lead: int, *, analog: bool = True) -> HistoryRows:
    """``history_track`` of each series over its own rows (row 0 its first): candidates
    (S, T, R, H), analog quantiles (S, T, R, Q). The series on a thread per CPU: numpy
    lets go of the GIL in most of the analog's search (40 validation VMs took 24 s on this
    project's two cores, ~54 s on one thread), and each series' rows are its own, so the
    result does not depend on the order."""
    out = HistoryRows(
        np.full((*grid.y.shape, len(HISTORY)), np.nan), np.full((*grid.y.shape, len(QUANTILES)), np.nan)
    )

    def one(i: int) -> None:
        off, n = int(grid.offsets[i]), int(grid.lengths[i])
        rows = history_track(grid.y[i, off : off + n], lead, grid.step_s, analog=analog)
        out.candidates[i, off : off + n], out.analog_quantiles[i, off : off + n] = rows

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(one, range(len(grid.series_ids))))
    return out


def choose_tail(grid: Grid, cal: np.ndarray, cfg: BacktestConfig, lead: int) -> np.ndarray:
    """Calibrated quantiles (S, T, R, Q) whose levels >= q0.9 are, per series and resource
    in ``cfg.tail_resources``, the mean of the model's, an anchor's (``tail_anchor``: the
    last value, CPU's peak of the last hour) plus the series' recent changes from it over
    the lead (``IncrementQuantiles``) and its recent values' quantiles, weighted by their
    recent pinball losses (network: the best alone; ``TailChoice``). Causal like
    ``choose_median``."""
    # the hour's max only where it is an anchor (a window over every resource is a
    # temporary of S x T x R x 12 floats: ~330 MB for 100 VMs x 30 days)
    peak = np.full(grid.y.shape, np.nan)
    cols = [RESOURCES.index(r) for r in HOUR_PEAK_RESOURCES if r in cfg.tail_resources]
    if cols:
        peak[..., cols] = window_max(grid.y[..., cols], max(1, int(round(ANCHOR_PEAK_S / grid.step_s))))
    anchor = tail_anchor(last_value(grid.y), peak)
    choice = TailChoice(cal.shape[0], cfg.tail_resources, cfg.increment_window, cfg.tail_half_life)
    # the other candidates' tails issued at each step (S, T, R, K - 1, Q); the model's is cal
    others = np.full((*cal.shape[:3], len(TAIL_CANDIDATES) - 1, cal.shape[-1]), np.nan)
    out = cal.copy()

    def learn(idx: np.ndarray, tt: int, t: int) -> None:
        tails = np.concatenate([cal[idx, tt][..., None, :], others[idx, tt]], axis=-2)
        choice.learn(idx, tails, anchor[idx, tt], grid.y[idx, t])

    def act(idx: np.ndarray, t: int) -> None:
        out[idx, t], tails = choice.issue(idx, cal[idx, t], anchor[idx, t])
        others[idx, t] = tails[..., 1:, :]

    walk_causally(~np.isnan(cal[..., 0, 0]), lead, learn, act)
    return out


def walk_causally(
    has: np.ndarray, lead: int, learn: Callable[[np.ndarray, int, int], None], act: Callable[[np.ndarray, int], None]
) -> None:
    """The online replay every stateful step of the backtest shares. ``has`` (S, T): which
    series forecast at which step. At step t, first ``learn(idx, t - lead, t)`` from the
    forecasts whose targets arrive at t, then ``act(idx, t)`` for the forecasts issued at
    t: a forecast never sees an outcome after its issue time."""
    for t in range(has.shape[1]):
        tt = t - lead
        if tt >= 0:
            idx = np.flatnonzero(has[:, tt])
            if idx.size:
                learn(idx, tt, t)
        idx = np.flatnonzero(has[:, t])
        if idx.size:
            act(idx, t)


def calibrate(grid: Grid, raw: np.ndarray, cfg: BacktestConfig, lead: int) -> np.ndarray:
    """Online conformal calibration: at step t, learn from targets that arrived at t
    (issued at t - lead), then adjust the forecasts issued at t. (S, T, R, Q) float64:
    the tails chosen later are often exactly a past value (a pinned VM's last value plus a
    change of 0), and rounding them to float32 put about half of those ties under the
    actual, as misses."""
    s_n = raw.shape[0]
    bank = CalibrationBank(
        s_n,
        window=cfg.calibration_window,
        gamma=cfg.calibration_gamma,
        error_half_life=cfg.calibration_error_half_life,
    )
    cal = np.full(raw.shape, np.nan)

    def learn(idx: np.ndarray, tt: int, t: int) -> None:
        bank.update(idx, raw[idx, tt], grid.y[idx, t], issued=cal[idx, tt])

    def act(idx: np.ndarray, t: int) -> None:
        cal[idx, t] = bank.adjust(idx, raw[idx, t])

    walk_causally(~np.isnan(raw[..., 0, 0]), lead, learn, act)
    return cal


def allocate_pooled(cal: np.ndarray, budget: float, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """PRAE's pooled violation-budget allocation, step by step in time order (the price
    at step t depends on steps <= t only): alloc, level (S, T, R)."""
    s_n, t_n, r_n, _ = cal.shape
    policy = PooledBudget(budget, rate=rate)
    state = policy.initial_state(r_n)
    alloc = np.full((s_n, t_n, r_n), np.nan)
    level = np.full((s_n, t_n, r_n), np.nan)
    has = ~np.isnan(cal[..., 0]).all(axis=2)  # (S, T)
    for t in range(t_n):
        idx = np.flatnonzero(has[:, t])
        if not idx.size:
            continue
        q = cal[idx, t].transpose(1, 0, 2).astype(np.float64)  # (R, n, Q)
        res, state = policy.step(q, state)
        alloc[idx, t] = res.alloc.T
        level[idx, t] = res.level.T
    return alloc, level


def allocate(cal: np.ndarray, budget: float, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """PRAE's per-step violation-budget allocation for every step: alloc, level (S, T, R)."""
    s_n, t_n, r_n, _ = cal.shape
    alloc = np.full((s_n, t_n, r_n), np.nan)
    level = np.full((s_n, t_n, r_n), np.nan)
    for a in range(0, t_n, chunk):
        q = cal[:, a : a + chunk].transpose(1, 2, 0, 3).astype(np.float64)  # (T, R, S, Q)
        res = allocate_quantiles(q, budget)
        alloc[:, a : a + chunk] = res.alloc.transpose(2, 0, 1)
        level[:, a : a + chunk] = res.level.transpose(2, 0, 1)
    return alloc, level


def run_backtest(series: list[Series], predictor: Predictor, cfg: BacktestConfig) -> BacktestResult:
    """The whole replay; deterministic for ``cfg.seed``."""
    timings: dict[str, float] = {}

    def timed(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    grid = align(series)
    lead = cfg.validate(grid.step_s, predictor.horizon_steps)
    timed("align", t0)

    t0 = time.perf_counter()
    raw, versions, logs = forecast(grid, predictor, cfg, lead)
    timed("forecast", t0)
    # of which retraining (the rest is batched inference)
    timings["retrain"] = round(sum(log.get("seconds", 0.0) for log in logs), 3)

    # before calibration: the model's quantiles are moved onto the chosen median and
    # blended with the analog quantiles, and the calibration adjusts (and learns from)
    # those, so the interval follows the median
    t0 = time.perf_counter()
    centred = raw
    if cfg.median_half_life is not None or cfg.analog_weight > 0:
        history = history_grid(grid, lead, analog=cfg.analog)
        if cfg.median_half_life is not None:
            centred = centre_on(raw, choose_median(grid, raw, cfg, lead, history.candidates))
        if cfg.analog_weight > 0:
            centred = blend_analog(centred, history.analog_quantiles, cfg.analog_weight)
        del history
    timed("point", t0)

    t0 = time.perf_counter()
    cal = calibrate(grid, centred, cfg, lead)
    del centred
    timed("calibrate", t0)

    # after the median, so tail levels under a chosen median are raised to it
    t0 = time.perf_counter()
    if cfg.tail_resources:
        cal = choose_tail(grid, cal, cfg, lead)
    timed("tail", t0)

    t0 = time.perf_counter()
    allocs: dict[float, np.ndarray] = {}
    level = np.empty(0)
    for budget in dict.fromkeys((cfg.violation_target, *cfg.extra_budgets)):
        if cfg.pooled_budget:
            alloc, lv = allocate_pooled(cal, budget, cfg.budget_price_rate)
        else:
            alloc, lv = allocate(cal, budget)
        allocs[budget] = alloc
        if budget == cfg.violation_target:
            level = lv
    timed("allocate", t0)

    t0 = time.perf_counter()
    base = all_baselines(grid.y, lead, grid.step_s, cfg.season_s)
    timed("baselines", t0)

    return BacktestResult(cfg, grid, lead, raw, cal, allocs, level, base, versions, logs, timings)
