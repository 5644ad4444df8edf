"""Per-workload state of the run loop: telemetry history, forecasts awaiting their actual.

Plain Python and numpy: the loop owns one :class:`WorkloadTracker` per workload and
feeds it what the Ray actors report. Nothing here talks to Ray.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from prae.config import WorkloadSpec
from prae.model.calibration import ConformalCalibrator
from prae.model.combination import (
    CANDIDATES,
    ChoiceRecord,
    MedianSelector,
    level_ratio,
    point_candidates,
    with_median,
)
from prae.model.tails import ANCHOR_PEAK_S, TailChoice, tail_anchor
from prae.resources import QUANTILE_COLUMNS, QUANTILES, RESOURCES
from prae.telemetry.alignment import align_shadow_by_progress
from prae.telemetry.sample import TelemetrySample

# Keep enough history for a model window plus alignment look-ups, and no more.
MAX_HISTORY = 4096


@dataclass
class Series:
    """One role's telemetry (live or shadow) as parallel lists, oldest first."""

    ts: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))
    values: deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))
    progress: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))
    total: int = 0  # samples ever seen (the deques forget the oldest)
    # (total, stacked values, times): a tick reads the stack for its model window, the
    # shadow's level ratio and the hour's peak, and the times for the peak and for each
    # resolved target; rebuilding up to MAX_HISTORY rows each time is wasted work
    _stacked: tuple[int, np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    def extend(self, samples: Iterable[TelemetrySample]) -> None:
        for s in samples:
            self.ts.append(s.ts)
            self.values.append(s.as_array())
            self.progress.append(s.progress)
            self.total += 1

    def __len__(self) -> int:
        return len(self.ts)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(values (T, R), times (T,)), oldest first; read-only, rebuilt only after new samples."""
        if self._stacked is None or self._stacked[0] != self.total:
            arr = np.stack(self.values) if self.values else np.zeros((0, len(RESOURCES)))
            ts = np.fromiter(self.ts, dtype=float, count=len(self.ts))
            arr.setflags(write=False)
            ts.setflags(write=False)
            self._stacked = (self.total, arr, ts)
        return self._stacked[1], self._stacked[2]

    def array(self) -> np.ndarray:
        """(T, R) the values, oldest first; read-only, rebuilt only after new samples."""
        return self._arrays()[0]

    def peak(self, seconds: float) -> np.ndarray:
        """(R,) the max of each resource over the samples of the last ``seconds`` (up to the
        newest sample, inclusive); NaN where none is known."""
        values, ts = self._arrays()
        if not ts.size:
            return np.full(len(RESOURCES), np.nan)
        recent = values[int(np.searchsorted(ts, ts[-1] - seconds, side="left")) :]
        top = np.where(np.isnan(recent), -np.inf, recent).max(axis=0)
        return np.where(np.isfinite(top), top, np.nan)

    def nearest(self, ts: float) -> tuple[float, np.ndarray] | None:
        values, times = self._arrays()
        if not times.size:
            return None
        i = int(np.argmin(np.abs(times - ts)))
        return float(times[i]), values[i]


class IssuedForecast(NamedTuple):
    """What ``WorkloadTracker.point_forecast`` issues: the quantiles (R, Q) to act on, and
    what to score when the target comes: the point candidates (R, K), the tails (R, 2, Q)
    and the anchor (R,) the increments' tail was measured from."""

    quantiles: np.ndarray
    candidates: np.ndarray
    tails: np.ndarray
    anchor: np.ndarray


@dataclass
class PendingForecast:
    issued_at: float
    target_ts: float
    quantiles: np.ndarray  # (R, Q) calibrated, raw units
    raw: np.ndarray  # (R, Q) as the model said it, for the calibrator
    source: str
    model_version: str
    shadow_used: bool
    issued: IssuedForecast | None = None  # what the choices learn from at the target (None: nothing)


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
    ) -> None:
        """``carried``: the point-forecast choice of this workload's previous run
        (:mod:`prae.engine.choices`), to start from instead of from nothing."""
        self.spec = spec
        self.interval_s = interval_s
        self.live = Series()
        self.shadow = Series()
        self.live_status = RoleStatus()
        self.shadow_status = RoleStatus()
        self.pending: deque[PendingForecast] = deque()
        self.calibrator = ConformalCalibrator(QUANTILES, window=calibration_window)
        # The same per-workload choice of the point forecast as the backtest's
        # (prae.backtest.runner.choose_median): the model's median or the last value, and
        # here also the last value moved as the shadow moved and the shadow ahead in live
        # units (NaN without a shadow, which then scores as the model's median and never wins).
        self.median_choice = MedianSelector(
            1, len(RESOURCES), half_life=median_half_life, n_candidates=len(CANDIDATES)
        )
        if carried is not None:
            self.median_choice.restore(0, carried)
        # The backtest's tail choice too (prae.backtest.runner.choose_tail): cpu, disk and
        # net may take their levels >= q0.9 from an anchor (the last value; cpu's peak of
        # the last hour) plus this run's own changes from it.
        self.tail_choice = TailChoice(1)
        self.released = False
        self._aligned: dict[tuple[int, int, int], np.ndarray] = {}  # see aligned_shadow

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def finished(self) -> bool:
        return self.live_status.exit_code is not None

    def ready_to_forecast(self, min_steps: int = 3) -> bool:
        return not self.finished and len(self.live) >= min_steps

    # ------------------------------------------------------------------ windows

    def window(self, window_steps: int, lead_steps: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """(live (T, R), shadow (T, R) all-NaN if none, whether any shadow value is known).

        Left-padded with NaN to ``window_steps``; the shadow rows are what the shadow did at
        the progress the live run should reach ``lead_steps`` later.
        """
        t = window_steps
        live = self.live.array()[-t:]
        shadow = self.aligned_shadow(lead_steps)[-t:]
        pad = t - live.shape[0]
        if pad > 0:
            filler = np.full((pad, len(RESOURCES)), np.nan)
            live = np.vstack([filler, live])
            shadow = np.vstack([filler, shadow])
        used = bool(np.isfinite(shadow[-1]).any())
        return live, shadow, used

    def aligned_shadow(self, lead_steps: int) -> np.ndarray:
        """(T, R) for the live history: what the shadow did at the progress the live run
        should reach ``lead_steps`` after each step; all NaN without a shadow. Kept until
        a new sample arrives: a tick asks for the model window's lead and, for the point
        forecast, for the same lead again and for lead 0."""
        key = (self.live.total, self.shadow.total, lead_steps)
        if key not in self._aligned:
            if len(self._aligned) >= 4 or any(k[:2] != key[:2] for k in self._aligned):
                self._aligned.clear()
            if not len(self.shadow) or self.spec.shadow.mode == "none":
                out = np.full((len(self.live), len(RESOURCES)), np.nan)
            else:
                lp = np.fromiter(self.live.progress, dtype=float)
                sp = np.fromiter(self.shadow.progress, dtype=float)
                out = align_shadow_by_progress(lp, sp, self.shadow.array(), lead_steps)
            self._aligned[key] = out
        return self._aligned[key]

    # ------------------------------------------------------------------ forecasts

    def add_forecast(self, fc: PendingForecast) -> None:
        self.pending.append(fc)

    def point_forecast(self, raw: np.ndarray, calibrated: np.ndarray, lead_steps: int) -> IssuedForecast:
        """The calibrated forecast (R, Q) for ``lead_steps`` ahead with its median replaced
        by the chosen candidate (kept inside [q0.1, q0.9]) and then its tail chosen
        (``TailSelector``), and the candidates and tails to score when the target comes."""
        i50 = QUANTILES.index(0.5)
        one = np.zeros(1, np.int64)
        nan = np.full(len(RESOURCES), np.nan)
        last = np.asarray(self.live.values[-1], dtype=float) if self.live.values else nan
        now, ahead, ratio = nan, nan, nan
        if len(self.live):
            now_all = self.aligned_shadow(0)
            now, ahead = now_all[-1], self.aligned_shadow(lead_steps)[-1]
            ratio = level_ratio(self.live.array(), now_all)
        cand = point_candidates(np.asarray(raw, dtype=float)[:, i50], last, now, ahead, ratio)
        chosen = self.median_choice.select(one, cand[None])[0]
        # the tail after the median: levels under a median the shadow foresaw are raised to it
        anchor = tail_anchor(last, self.live.peak(ANCHOR_PEAK_S))
        quantiles, tails = self.tail_choice.issue(one, with_median(calibrated, chosen)[None], anchor[None])
        return IssuedForecast(quantiles[0], cand, tails[0], anchor)

    def choice_record(self) -> ChoiceRecord:
        """What the point-forecast choice has learnt, for the workload's next run."""
        return self.median_choice.record(0)

    def resolve(self, reserved: Mapping[str, float], *, final: bool = False) -> list[dict[str, Any]]:
        """Forecast rows whose target time has been observed (or, if ``final``, all of them).

        ``reserved`` maps resource -> what PRAE held when the target time came.
        The actual is the live sample nearest the target, within half an interval.
        """
        rows = []
        last = self.live.ts[-1] if self.live.ts else -math.inf
        tolerance = self.interval_s / 2
        while self.pending and (final or self.pending[0].target_ts <= last + tolerance):
            fc = self.pending.popleft()
            near = self.live.nearest(fc.target_ts)
            actual = None
            if near is not None and abs(near[0] - fc.target_ts) <= max(tolerance, self.interval_s):
                actual = near[1]
                self.calibrator.update(fc.raw, actual)
                one, y = np.zeros(1, np.int64), np.asarray(actual, dtype=float)[None]
                if fc.issued is not None:
                    self.median_choice.update(one, fc.issued.candidates[None], y)
                    self.tail_choice.learn(one, fc.issued.tails[None], fc.issued.anchor[None], y)
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
        return rows


def telemetry_rows(role: str, samples: Iterable[TelemetrySample]) -> list[dict[str, Any]]:
    return [
        {"ts": s.ts, "role": role, "cpu": s.cpu, "mem": s.mem, "disk": s.disk, "net": s.net, "progress": s.progress}
        for s in samples
    ]
