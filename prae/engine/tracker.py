"""Per-workload state of the run loop: telemetry history, forecasts awaiting their actual.

Plain Python and numpy: the loop owns one :class:`WorkloadTracker` per workload and
feeds it what the Ray actors report. Nothing here talks to Ray.

What the workloads learn from their outcomes -- the conformal calibration, the choice of
the point forecast and of the tail -- lives in one :class:`LearningState` per loop, as
arrays with a slot per workload (the backtest's vectorised banks), so that a tick issues
and learns for every workload in one call each (:func:`issue_forecasts`,
:func:`learn_outcomes`) instead of once per workload. A tracker made alone has a state
of its own.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from prae.config import WorkloadSpec
from prae.model.analogs import AnalogRows
from prae.model.calibration import CalibrationBank
from prae.model.combination import (
    CANDIDATES,
    ChoiceRecord,
    MedianSelector,
    blend_analog,
    centre_on,
    level_sums,
    point_candidates,
    ratio_of,
)
from prae.model.history import HistoryNow
from prae.model.tails import ANCHOR_PEAK_S, TailChoice, tail_anchor
from prae.resources import QUANTILE_COLUMNS, QUANTILES, RESOURCES
from prae.telemetry.alignment import RATE_WINDOW, align_shadow_by_progress
from prae.telemetry.sample import TelemetrySample

# Keep enough history for a model window plus alignment look-ups, and no more.
MAX_HISTORY = 4096
# Rows per block of ``Series.peak``'s kept maxima.
PEAK_BLOCK = 64


def _top(values: np.ndarray) -> np.ndarray:
    """(R,) the max over the rows of (T, R) ``values``, NaN ignored; -inf where none."""
    return np.where(np.isnan(values), -np.inf, values).max(axis=0, initial=-np.inf)


class Series:
    """One role's telemetry (live or shadow): its newest ``capacity`` samples, as arrays.

    ``ts`` (T,), ``values`` (T, R) and ``progress`` (T,) are read-only views, oldest first,
    valid until the next ``extend`` (copy what must outlive it).

    Why arrays and not deques of samples: a tick reads the whole history (the model's
    window, the shadow's level ratio, the hour's peak, each resolved target), and
    restacking 4096 small arrays cost each workload about a millisecond per tick; 1000
    workloads' histories took 2 GB as objects (0.4 GB here). The rows sit in a buffer of
    twice the capacity: a sample is written after the last one, and when the buffer is
    full the newest rows move to its front (amortised O(1) per sample), so the history is
    always one contiguous slice.
    """

    def __init__(self, capacity: int = MAX_HISTORY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 sample, got {capacity}")
        self.capacity = int(capacity)
        self._buf = np.full((2 * self.capacity, 2 + len(RESOURCES)), np.nan)  # ts, values, progress
        self._end = 0  # the history is rows [_end - _len, _end)
        self._len = 0
        self.total = 0  # samples ever seen (the buffer forgets the oldest)
        # Row b % len of the max of each complete block b of PEAK_BLOCK samples (block b is
        # samples [b * PEAK_BLOCK, (b + 1) * PEAK_BLOCK) since the first), -inf where unknown.
        self._blocks = np.full((self.capacity // PEAK_BLOCK + 2, len(RESOURCES)), -np.inf)

    def extend(self, samples: Iterable[TelemetrySample]) -> None:
        for s in samples:
            if self._end == self._buf.shape[0]:
                keep = self.capacity - 1
                self._buf[:keep] = self._buf[self._end - keep : self._end]
                self._end, self._len = keep, min(self._len, keep)
            row = self._buf[self._end]
            row[0], row[1:-1], row[-1] = s.ts, s.as_array(), s.progress
            self._end += 1
            self._len = min(self._len + 1, self.capacity)
            self.total += 1
            if self.total % PEAK_BLOCK == 0 and self._len >= PEAK_BLOCK:
                block = self._buf[self._end - PEAK_BLOCK : self._end, 1:-1]
                b = self.total // PEAK_BLOCK - 1
                self._blocks[b % len(self._blocks)] = _top(block)

    def __len__(self) -> int:
        return self._len

    def _view(self, cols: slice | int) -> np.ndarray:
        out = self._buf[self._end - self._len : self._end, cols]
        out.flags.writeable = False
        return out

    @property
    def ts(self) -> np.ndarray:
        """(T,) unix seconds, oldest first."""
        return self._view(0)

    @property
    def values(self) -> np.ndarray:
        """(T, R) in ``RESOURCES`` order, oldest first."""
        return self._view(slice(1, 1 + len(RESOURCES)))

    @property
    def progress(self) -> np.ndarray:
        """(T,) as reported (NaN where not), oldest first."""
        return self._view(-1)

    def peak(self, seconds: float) -> np.ndarray:
        """(R,) the max of each resource over the samples of the last ``seconds`` (up to the
        newest sample, inclusive); NaN where none is known.

        Why blocks: the tail anchor asks for the hour's peak every tick, 3600 rows at 1 Hz;
        the maxima of complete blocks of ``PEAK_BLOCK`` samples are kept as they fill, so a
        call scans at most two partial blocks and takes the max of the blocks between."""
        values, ts = self.values, self.ts
        if not ts.size:
            return np.full(len(RESOURCES), np.nan)
        i0 = int(np.searchsorted(ts, ts[-1] - seconds, side="left"))
        first = self.total - len(ts)  # the first kept sample, counted from the first
        b_lo, b_hi = -(-(first + i0) // PEAK_BLOCK), self.total // PEAK_BLOCK  # whole blocks inside
        if b_hi - b_lo < 2:
            parts = [values[i0:]]
        else:
            blocks = self._blocks[np.arange(b_lo, b_hi) % len(self._blocks)]
            parts = [values[i0 : b_lo * PEAK_BLOCK - first], blocks, values[b_hi * PEAK_BLOCK - first :]]
        top = np.max([_top(p) for p in parts], axis=0)
        return np.where(np.isfinite(top), top, np.nan)

    def nearest(self, ts: float) -> tuple[float, np.ndarray] | None:
        values, times = self.values, self.ts
        if not times.size:
            return None
        i = int(np.argmin(np.abs(times - ts)))
        return float(times[i]), values[i].copy()


class PointInputs(NamedTuple):
    """What a workload's own history gives a forecast: the point candidates (R, K), the
    tail anchor (R,) and the analog quantiles (R, Q) (NaN until ``ANALOG_SPREAD`` past
    moments are known, ``prae.model.analogs``, or with the analog search off)."""

    candidates: np.ndarray
    anchor: np.ndarray
    analog_quantiles: np.ndarray


class IssuedForecast(NamedTuple):
    """What ``issue_forecasts`` issues: the quantiles (R, Q) to act on, and what to score
    when the target comes: the point candidates (R, K), the candidate tails (R, 3, Q), the anchor
    (R,) the increments' tail was measured from, the calibration's own quantiles (R, Q)
    before the tail's choice (its coverage and adaptive levels count those, as the
    backtest's), and what it calibrated: the model's quantiles moved onto the chosen median
    and blended with the analog quantiles (R, Q), which it learns from."""

    quantiles: np.ndarray
    candidates: np.ndarray
    tails: np.ndarray
    anchor: np.ndarray
    calibrated: np.ndarray
    centred: np.ndarray


class LearningState:
    """What a loop's workloads learn from their outcomes, one slot per workload.

    ``calibration`` (``CalibrationBank``), ``median`` (``MedianSelector`` over the
    candidates of ``prae.model.combination``) and ``tails`` (``TailChoice``): the same
    code and arrays as the backtest's (``prae.backtest.runner``). Why one state for all:
    per-workload objects cost ~1.6 ms of numpy calls per workload and tick, 1.65 s for
    1000 workloads, where the model's batched inference takes 38 ms (bench/engine_tick.py).
    """

    def __init__(self, n_workloads: int, calibration_window: int = 200, median_half_life: float = 288.0) -> None:
        if n_workloads < 1:
            raise ValueError(f"n_workloads must be >= 1, got {n_workloads}")
        self.size = int(n_workloads)
        self.calibration = CalibrationBank(self.size, QUANTILES, window=calibration_window)
        # The backtest's per-workload median choice (prae.backtest.runner.choose_median): the
        # model's median, the last value and the candidates of the workload's own history
        # (seasonal, analog), and here also the last value moved as the shadow moved and the
        # shadow ahead in live units (NaN without a shadow, or before a season's or the
        # analog's history: such a candidate has no weight).
        self.median = MedianSelector(
            self.size, len(RESOURCES), half_life=median_half_life, n_candidates=len(CANDIDATES)
        )
        # The backtest's tail choice too (prae.backtest.runner.choose_tail): every
        # resource's levels >= q0.9 weigh the model's tail, an anchor (the last value;
        # cpu's peak of the last hour) plus the workload's own changes from it, and the
        # quantiles of its own recent values by their recent losses.
        self.tails = TailChoice(self.size)


@dataclass
class PendingForecast:
    issued_at: float
    target_ts: float
    quantiles: np.ndarray  # (R, Q) calibrated, raw units
    source: str
    model_version: str
    shadow_used: bool
    issued: IssuedForecast  # what the calibration and the choices learn from at the target


@dataclass
class RoleStatus:
    exit_code: int | None = None
    result: dict[str, Any] | None = None
    cost_cpu_seconds: float = 0.0
    error: str | None = None


class WorkloadTracker:
    def __init__(
        self,
        spec: WorkloadSpec,
        interval_s: float,
        calibration_window: int = 200,
        median_half_life: float = 288.0,
        carried: ChoiceRecord | None = None,
        state: LearningState | None = None,
        slot: int = 0,
        analog: bool = True,
    ) -> None:
        """``carried``: the point-forecast choice of this workload's previous run
        (:mod:`prae.engine.choices`), to start from instead of from nothing. ``state``,
        ``slot``: where this workload learns, shared with the loop's other workloads;
        None: a state of its own, made with ``calibration_window`` and ``median_half_life``
        (which a shared state has set already). ``analog``: whether the analog point
        candidate is searched for (``predictor.analog_candidate``)."""
        self.spec = spec
        self.interval_s = interval_s
        self.live = Series()
        self.shadow = Series()
        self.live_status = RoleStatus()
        self.shadow_status = RoleStatus()
        self.pending: deque[PendingForecast] = deque()
        self.last_issued_at: float | None = None
        if state is None:
            state, slot = LearningState(1, calibration_window, median_half_life), 0
        if not 0 <= slot < state.size:
            raise ValueError(f"slot {slot} is outside the learning state's {state.size} workloads")
        self.state, self.slot = state, int(slot)
        if carried is not None:
            state.median.restore(self.slot, carried)
        self.released = False
        self._aligned: dict[tuple[int, int, int], np.ndarray] = {}  # see aligned_shadow
        # see aligned_now: its rows, the samples they were made with, the first row to redo
        self._now_rows = np.zeros((0, len(RESOURCES)))
        self._now_seen = (0, 0)
        self._now_redo = 0
        self._now_sums = np.zeros((2, len(RESOURCES)))  # level_sums of the final rows
        self._history = HistoryNow(len(RESOURCES), analog=analog)  # keeps the periodic candidate's period

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def finished(self) -> bool:
        return self.live_status.exit_code is not None

    def ready_to_forecast(self, min_steps: int = 3) -> bool:
        """Running, with ``min_steps`` samples and one newer than its last forecast's: a tick
        that got no new sample (its supervisor or sampler is slow this time) would issue the
        same forecast again."""
        if self.finished or len(self.live) < min_steps:
            return False
        return self.last_issued_at is None or self.live.ts[-1] > self.last_issued_at

    # ------------------------------------------------------------------ windows

    def window(self, window_steps: int, lead_steps: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """(live (T, R), shadow (T, R) all-NaN if none, whether any shadow value is known).

        Left-padded with NaN to ``window_steps``; the shadow rows are what the shadow did at
        the progress the live run should reach ``lead_steps`` later.
        """
        t = window_steps
        live = self.live.values[-t:]
        shadow = self.aligned_shadow(lead_steps, rows=t)
        pad = t - live.shape[0]
        if pad > 0:
            filler = np.full((pad, len(RESOURCES)), np.nan)
            live = np.vstack([filler, live])
            shadow = np.vstack([filler, shadow])
        used = bool(np.isfinite(shadow[-1]).any())
        return live, shadow, used

    def aligned_shadow(self, lead_steps: int, rows: int | None = None) -> np.ndarray:
        """(T, R) for the live history, or its last ``rows`` rows: what the shadow did at the
        progress the live run should reach ``lead_steps`` after each step; all NaN without a
        shadow. Kept until a new sample arrives: a tick asks for the model window's lead
        (its rows) and, for the point forecast, for the same lead's last row and for lead 0.

        Why ``rows``: a row reads the live progress of the ``RATE_WINDOW`` steps before it
        only, so the model's window needs the alignment of its own rows, not of the whole
        history (up to 4096 rows, each tick, per workload)."""
        key = (self.live.total, self.shadow.total, lead_steps)
        hit = self._aligned.get(key)
        if hit is None or (hit.shape[0] < len(self.live) and (rows is None or rows > hit.shape[0])):
            if len(self._aligned) >= 4 or any(k[:2] != key[:2] for k in self._aligned):
                self._aligned.clear()
            n = len(self.live) if rows is None else min(int(rows), len(self.live))
            if not len(self.shadow) or self.spec.shadow.mode == "none":
                hit = np.full((n, len(RESOURCES)), np.nan)
            else:
                start = max(0, len(self.live) - n - RATE_WINDOW)  # the rows' rate windows too
                hit = align_shadow_by_progress(
                    self.live.progress[start:], self.shadow.progress, self.shadow.values, lead_steps
                )[-n:] if n else np.zeros((0, len(RESOURCES)))
            self._aligned[key] = hit
        return hit if rows is None else hit[hit.shape[0] - min(int(rows), hit.shape[0]) :]

    def aligned_now(self) -> np.ndarray:
        """``aligned_shadow(0)``, kept up to date row by row: (T, R) for the live history.

        Why: the point forecast's level ratio sums the whole history's lead-0 alignment each
        tick, and aligning the whole history again cost ~0.7 ms per workload and tick at
        1500 samples (bench/engine_tick.py). A row is final once it has a value (the shadow
        has been seen past the end of its span, and later samples lie beyond it) or its live
        progress is unknown (it never gets one); only rows from the first that is not final
        are aligned again, with their rate windows."""
        seen = (self.live.total, self.shadow.total)
        if seen == self._now_seen:
            return self._now_rows
        n, new = len(self.live), self.live.total - self._now_seen[0]
        rows = np.vstack([self._now_rows, np.full((min(new, n), len(RESOURCES)), np.nan)])[-n:] if n else self._now_rows[:0]
        first = self.live.total - n  # the retained history's first row, counted from the run's start
        k = max(0, self._now_redo - first)
        if k < n and len(self.shadow) and self.spec.shadow.mode != "none":
            start = max(0, k - RATE_WINDOW)
            progress = self.live.progress
            rows[k:] = align_shadow_by_progress(progress[start:], self.shadow.progress, self.shadow.values, 0)[k - start :]
            final = np.isfinite(rows[k:]).any(axis=1) | np.isnan(progress[k:])
            open_rows = np.flatnonzero(~final)
            done = k + (int(open_rows[0]) if open_rows.size else n - k)
            self._now_sums += level_sums(self.live.values[k:done], rows[k:done])
            k = done
        self._now_rows, self._now_seen, self._now_redo = rows, seen, first + k
        return rows

    def level_ratio_now(self) -> np.ndarray:
        """``level_ratio`` of the live run against ``aligned_now``, over the run so far:
        the final rows' sums are kept (also once the buffer forgets the rows), the open
        rows' added each tick. Summing the whole history again cost ~0.15 ms per workload
        and tick at 1500 samples."""
        rows = self.aligned_now()
        k = max(0, self._now_redo - (self.live.total - len(self.live)))
        return ratio_of(self._now_sums + level_sums(self.live.values[k:], rows[k:]))

    # ------------------------------------------------------------------ forecasts

    def add_forecast(self, fc: PendingForecast) -> None:
        self.pending.append(fc)
        self.last_issued_at = fc.issued_at

    def point_forecast(self, raw: np.ndarray, lead_steps: int) -> IssuedForecast:
        """``issue_forecasts`` for this workload alone: raw (R, Q) the model's."""
        return issue_forecasts([self], np.asarray(raw)[None], lead_steps)[0]

    def point_inputs(self, raw_median: np.ndarray, lead_steps: int) -> PointInputs:
        """What the choices need from this workload's history for a forecast ``lead_steps``
        ahead whose model median is ``raw_median`` (R,)."""
        nan = np.full(len(RESOURCES), np.nan)
        last = np.array(self.live.values[-1]) if len(self.live) else nan
        now, ahead, ratio = nan, nan, nan
        history, analog = None, AnalogRows.unknown((len(RESOURCES),)).quantiles
        if len(self.live):
            now, ahead = self.aligned_now()[-1], self.aligned_shadow(lead_steps, rows=1)[-1]
            ratio = self.level_ratio_now()
            # the samples are the steps: a sampler running late stretches a period a little
            history, analog = self._history(self.live.values, self.live.total, lead_steps, self.interval_s)
        cand = point_candidates(np.asarray(raw_median, dtype=float), last, now, ahead, ratio, history=history)
        return PointInputs(cand, tail_anchor(last, self.live.peak(ANCHOR_PEAK_S)), analog)

    def choice_record(self) -> ChoiceRecord:
        """What the point-forecast choice has learnt, for the workload's next run."""
        return self.state.median.record(self.slot)

    def resolve(self, reserved: Mapping[str, float], *, final: bool = False) -> list[dict[str, Any]]:
        """``take_resolved``, then ``learn_outcomes`` for this workload alone."""
        rows, outcomes = self.take_resolved(reserved, final=final)
        learn_outcomes(self.state, [(self.slot, fc, y) for fc, y in outcomes])
        return rows

    def take_resolved(
        self, reserved: Mapping[str, float], *, final: bool = False
    ) -> tuple[list[dict[str, Any]], list[tuple[PendingForecast, np.ndarray]]]:
        """Forecast rows whose target time has been observed (or, if ``final``, all of
        them), and the (forecast, actual (R,)) outcomes to learn from, oldest first.

        ``reserved`` maps resource -> what PRAE held when the target time came.
        The actual is the live sample nearest the target, within half an interval.
        """
        rows, outcomes = [], []
        last = self.live.ts[-1] if len(self.live) else -math.inf
        tolerance = self.interval_s / 2
        while self.pending and (final or self.pending[0].target_ts <= last + tolerance):
            fc = self.pending.popleft()
            near = self.live.nearest(fc.target_ts)
            actual = None
            if near is not None and abs(near[0] - fc.target_ts) <= max(tolerance, self.interval_s):
                actual = near[1]
                outcomes.append((fc, np.asarray(actual, dtype=float)))
            for r, res in enumerate(RESOURCES):
                row: dict[str, Any] = {
                    "issued_at": fc.issued_at,
                    "target_ts": fc.target_ts,
                    "resource": res,
                    "actual": None if actual is None else float(actual[r]),
                    "reserved": reserved.get(res),
                    "source": fc.source,
                    "model_version": fc.model_version,
                    "shadow_used": fc.shadow_used,
                }
                row.update({c: float(fc.quantiles[r, j]) for j, c in enumerate(QUANTILE_COLUMNS)})
                rows.append(row)
        return rows, outcomes


def _shared_state(trackers: Sequence[WorkloadTracker]) -> LearningState:
    state = trackers[0].state
    if any(t.state is not state for t in trackers):
        raise ValueError("the trackers do not share one LearningState")
    slots = [t.slot for t in trackers]
    if len(set(slots)) != len(slots):
        raise ValueError("two trackers share a slot of the learning state")
    return state


def issue_forecasts(trackers: Sequence[WorkloadTracker], raw: np.ndarray, lead_steps: int) -> list[IssuedForecast]:
    """The forecasts ``lead_steps`` ahead of workloads that share one ``LearningState``,
    in one call of each choice and of the calibration, as the backtest issues them: raw
    (n, R, Q) the model's. Each one's median is chosen from the candidates, the model's
    quantiles are moved onto it (``centre_on``), blended with the analog quantiles of its
    own history (``blend_analog``) and calibrated, then its tail is chosen
    (``TailChoice``). The tail comes after the median: levels under a median the shadow
    foresaw are raised to it."""
    if not trackers:
        return []
    state = _shared_state(trackers)
    slots = np.array([t.slot for t in trackers], dtype=np.int64)
    raw = np.asarray(raw, dtype=np.float64)
    i50 = QUANTILES.index(0.5)
    inputs = [t.point_inputs(raw[i, :, i50], lead_steps) for i, t in enumerate(trackers)]
    cand = np.stack([p.candidates for p in inputs])
    anchor = np.stack([p.anchor for p in inputs])
    analog = np.stack([p.analog_quantiles for p in inputs])
    centred = blend_analog(centre_on(raw, state.median.select(slots, cand)), analog)
    calibrated = state.calibration.adjust(slots, centred)
    quantiles, tails = state.tails.issue(slots, calibrated, anchor)
    return [
        IssuedForecast(quantiles[i], cand[i], tails[i], anchor[i], calibrated[i], centred[i])
        for i in range(len(trackers))
    ]


def learn_outcomes(state: LearningState, outcomes: Sequence[tuple[int, PendingForecast, np.ndarray]]) -> None:
    """Learn from (slot, forecast, actual (R,)) outcomes, in one call of each bank per
    round: a bank takes each slot at most once per call, so a workload with k outcomes
    (after a gap, or at the end) is in k rounds, its outcomes in order."""
    rounds: list[list[tuple[int, PendingForecast, np.ndarray]]] = []
    seen: dict[int, int] = {}
    for slot, fc, y in outcomes:
        k = seen.get(slot, 0)
        seen[slot] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append((slot, fc, y))
    for items in rounds:
        idx = np.array([slot for slot, _, _ in items], dtype=np.int64)
        y = np.stack([y for _, _, y in items])
        issued = [fc.issued for _, fc, _ in items]
        raw = np.stack([i.centred for i in issued])
        state.calibration.update(idx, raw, y, issued=np.stack([i.calibrated for i in issued]))
        state.median.update(idx, np.stack([i.candidates for i in issued]), y)
        state.tails.learn(idx, np.stack([i.tails for i in issued]), np.stack([i.anchor for i in issued]), y)


def telemetry_rows(role: str, samples: Iterable[TelemetrySample]) -> list[dict[str, Any]]:
    return [
        {"ts": s.ts, "role": role, "cpu": s.cpu, "mem": s.mem, "disk": s.disk, "net": s.net, "progress": s.progress}
        for s in samples
    ]
