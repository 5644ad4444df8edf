"""Per-workload choice of the point forecast: the model's median, the last value, the
seasonal candidates, or the last value moved as the shadow moved.

Why: the volume-weighted WAPE is dominated by a few busy workloads, and on some of them
(a VM pinned at 6.9 cores for hours) the reactive last value is nearly exact while the
model's median wobbles by a few % of the window's mean. Other workloads (bursty disk and
network) are the other way round, and some repeat themselves (a backup every night, a
burst every 87 minutes). So each workload, resource by resource, weighs the candidates by
their recent absolute error *on that workload*.

The rule, per (workload, resource) and candidate k (0 = model median, 1 = last value,
2-4 = ``prae.model.seasonal``'s periodic, daily and weekly, 5 = ``prae.model.analogs``'
analog: what followed the past moments most like now):

    E_k = sum_j d**age_j * |y_j - f_k,j| / sum_j d**age_j,    d = 0.5 ** (1 / half_life)

over the outcomes j already resolved (target time <= now), and the forecast issued now
is the candidates' mean weighted by exp(-SHARPNESS * (E_k / min E - 1)), over the
candidates known now ("no outcome yet" -> the model). Strictly causal: an outcome enters
only when its target has been observed. Worked number: half-life 288 outcomes (a day of
5-min steps); an error from a day ago weighs half of a new one, one from a week ago 1/128.
Until the seasonal candidates (2026-11-30) the forecast was the single best candidate
(argmin E_k; ``sharpness=None`` still is); the weighted mean was better on every resource
(``SHARPNESS``).

Two more where a workload has a shadow. ``shadow_change``: the last value times the
shadow's relative change between the progress the live run is at and the progress it
will reach at the target (see ``shadow_change``). It is weighed the same way, so it counts
only where it has been good on *that* workload: a replayed trace's shadow follows the live
curve closely; an ETL's 5 % shadow is dominated by start-up and is not followed.
And ``shadow_level``: the shadow's value over the target sample's progress in live units
(times ``level_ratio``, the live run's sum over the shadow's at the same progress so far).
Where the change is undefined -- a burst of disk writes from nothing, a replayed VM's
network coming back from idle -- the level still says how much. Re-scoring the shadow
ablation's cached runs of the time (``bench/shadow_ablation.py --reuse``) it took the
phase-change error with a shadow from 0.515 to 0.501 (without a shadow 0.548); replay
0.422 -> 0.380, the others within 0.003 (README: a fresh collection).
Where a candidate is unknown (no shadow, no last value, season or analog yet) the model's
median stands in for it when scored, so it cannot win by being absent, and it has no
weight in the forecast.

Only the median is chosen this way, before calibration: the model's quantiles are moved
onto it (``centre_on``) and averaged with the analog quantiles of the workload's own history
(``blend_analog``), and the calibration adjusts and learns from those, so the interval's
coverage is the calibration's. ``MedianSelector`` holds many workloads as
arrays, like ``CalibrationBank``.

On 25 training Bitbrains VMs (backtest, lead 900 s) the choice cut CPU's median WAPE
from 1.29x to 0.98x the last value's; half-lives of 3..48 steps and adding the mean /
median of the last hour or an EWMA as candidates were tried and were no better overall
(shorter memories chase noise on disk and network).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prae.model.history import HISTORY
from prae.resources import QUANTILES

CANDIDATES: tuple[str, ...] = ("model", "last_value", *HISTORY, "shadow_change", "shadow_level")
# How fast a candidate's weight falls with its error relative to the best's: at 20, one
# 5 % worse weighs e**-1 of the best's, one 20 % worse e**-4. Chosen on 40 validation
# Bitbrains VMs (prae/model/seasonal.py), median WAPE ratio to the last value with all
# five candidates (cpu / mem / disk / net): the best alone (None) 0.809 / 0.707 / 0.833 /
# 0.795; 5: 0.809 / 0.698 / 0.813 / 0.783; 20: 0.802 / 0.697 / 0.815 / 0.779; 50: 0.805 /
# 0.702 / 0.824 / 0.787.
SHARPNESS = 20.0
# The shadow's relative change is trusted within these factors: a shadow that idles at
# 0.01 cores before a phase of 1 core would otherwise multiply the live value by 100.
SHADOW_CHANGE_BOUNDS: tuple[float, float] = (0.2, 5.0)


def shadow_change(last: np.ndarray, shadow_now: np.ndarray, shadow_ahead: np.ndarray) -> np.ndarray:
    """The last live value moved by the shadow's relative change.

    last: the live workload's last value; shadow_now: the shadow over the progress of the
    live run's last sample; shadow_ahead: the shadow over the progress the target's sample
    will cover (both from ``align_shadow_by_progress``). Any equal shapes. Returns
    ``last * clip(ahead / now, *SHADOW_CHANGE_BOUNDS)``; ratio 1 where the shadow was 0
    and stays 0; NaN where the shadow does not know either point, or was 0 and rises
    (a ratio to 0 says nothing about the size).
    Worked number: last 2.0 cores, the shadow at 0.1 now and 0.3 ahead -> 6.0 cores.
    """
    last = np.asarray(last, dtype=np.float64)
    now = np.asarray(shadow_now, dtype=np.float64)
    ahead = np.asarray(shadow_ahead, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(now > 0, ahead / now, np.where(ahead == 0, 1.0, np.nan))
    ratio = np.where(np.isnan(now) | np.isnan(ahead), np.nan, ratio)
    lo, hi = SHADOW_CHANGE_BOUNDS
    return last * np.clip(ratio, lo, hi)


def level_sums(live: np.ndarray, shadow_now: np.ndarray) -> np.ndarray:
    """``level_ratio``'s numerator and denominator, shape (2, R): the sums of the live
    values and of the shadow's over the steps where both are known. Sums of consecutive
    stretches add up, so a caller can keep them as rows arrive (``WorkloadTracker``)."""
    live = np.asarray(live, dtype=np.float64)
    now = np.asarray(shadow_now, dtype=np.float64)
    both = ~np.isnan(live) & ~np.isnan(now)
    return np.stack([np.where(both, live, 0.0).sum(axis=0), np.where(both, now, 0.0).sum(axis=0)])


def ratio_of(sums: np.ndarray) -> np.ndarray:
    """(R,) live units per shadow unit from ``level_sums``; NaN where the shadow's sum is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sums[1] > 0, sums[0] / sums[1], np.nan)


def level_ratio(live: np.ndarray, shadow_now: np.ndarray) -> np.ndarray:
    """How many live units one shadow unit is, per resource: sum of the live values over
    the sum of the shadow's values at the same progress, over the steps where both are
    known. live, shadow_now: shape (T, R) (``shadow_now`` from ``align_shadow_by_progress``
    at lead 0). Returns shape (R,), NaN where the shadow's sum is 0 or nothing is known.

    Why a ratio of sums: a 5 % sample of an ETL reads and writes ~5 % of the bytes per
    unit of progress, but its CPU is set by what runs at once, not by the data; the ratio
    learns each from the run itself. Worked number: live [2, 4], shadow [0.1, 0.2] -> 20.
    """
    return ratio_of(level_sums(live, shadow_now))


# Outcomes a workload's resource must have resolved before another candidate may replace
# the model's median. On the shadow ablation's 50-100-step runs, choosing from the first
# few outcomes (a workload's start-up) chose the last value or the shadow's change for the
# rest of the run where the model was better later: phase error 0.658 -> 0.626 with 20.
# (The 30-day backtest has thousands per series: no change there.)
MIN_OUTCOMES = 20


def point_candidates(
    model_median: np.ndarray,
    last: np.ndarray,
    shadow_now: np.ndarray | None = None,
    shadow_ahead: np.ndarray | None = None,
    ratio: np.ndarray | None = None,
    *,
    history: np.ndarray | None = None,
) -> np.ndarray:
    """The candidates in ``CANDIDATES`` order, stacked on a new last axis: (..., 6)
    without a shadow, (..., 8) with one. ``history`` (..., 4): the candidates of
    ``prae.model.history`` (NaN columns without it). With a shadow: ``shadow_change`` of
    ``last``, and ``shadow_level``, the shadow ahead in live units (``shadow_ahead * ratio``,
    ratio from ``level_ratio``; NaN without one). Shapes broadcast together."""
    cols = [np.asarray(model_median, dtype=np.float64), np.asarray(last, dtype=np.float64)]
    hist = np.full((len(HISTORY),), np.nan) if history is None else np.asarray(history, dtype=np.float64)
    cols += [hist[..., j] for j in range(len(HISTORY))]
    if shadow_now is not None and shadow_ahead is not None:
        cols.append(shadow_change(cols[1], shadow_now, shadow_ahead))
        r = np.nan if ratio is None else np.asarray(ratio, dtype=np.float64)
        cols.append(np.asarray(shadow_ahead, dtype=np.float64) * r)
    return np.stack(np.broadcast_arrays(*cols), axis=-1)


@dataclass(frozen=True)
class ChoiceRecord:
    """What one series' choice has learnt, to carry it to the workload's next run: per
    resource and candidate (in ``CANDIDATES`` order) the decayed sum of absolute errors
    ``err`` (R, K), and per resource the decayed outcome count ``weight`` (R,) and the
    outcomes seen ``count`` (R,).

    Why carry it: a run of a recurring job starts with no outcomes, so the model's median
    stands for its first ``MIN_OUTCOMES`` and the choice then rests on a few dozen; which
    candidate suits a workload (a replay's shadow, a steady VM's last value) is a property
    of the workload, and its previous run has already measured it. Carried over in
    ``bench/shadow_ablation.py`` (each run's choice seeded by the other variant's run, as
    forecast before fine-tuning), the shadow's reduction of the error at phase changes went
    from 8.5-15.6 % to 13.9-26.0 % over four collections (README)."""

    err: np.ndarray
    weight: np.ndarray
    count: np.ndarray


class MedianSelector:
    """Decayed mean absolute error of each candidate per (series, resource).

    Arrays (S = series, R = resources, K = candidates):
        err (S, R, K) decayed sum of |error|; weight (S, R) decayed count of outcomes;
        count (S, R) outcomes seen (the model stands until ``min_outcomes``)
    """

    def __init__(
        self,
        n_series: int,
        n_resources: int,
        half_life: float = 288.0,
        n_candidates: int = 2,
        min_outcomes: int = MIN_OUTCOMES,
        sharpness: float | None = SHARPNESS,
    ) -> None:
        if half_life <= 0:
            raise ValueError(f"half_life must be > 0 outcomes, got {half_life}")
        if min_outcomes < 0:
            raise ValueError(f"min_outcomes must be >= 0, got {min_outcomes}")
        if not 1 <= n_candidates <= len(CANDIDATES):
            raise ValueError(f"n_candidates must be 1..{len(CANDIDATES)}, got {n_candidates}")
        if sharpness is not None and not sharpness > 0:
            raise ValueError(f"sharpness must be > 0 (or None: the best candidate alone), got {sharpness}")
        self.names = CANDIDATES[:n_candidates]
        self.sharpness = None if sharpness is None else float(sharpness)
        self.decay = 0.5 ** (1.0 / float(half_life))
        self.err = np.zeros((n_series, n_resources, n_candidates))
        self.min_outcomes = int(min_outcomes)
        self.count = np.zeros((n_series, n_resources), dtype=np.int64)  # outcomes seen  # (S, R, K)
        self.weight = np.zeros((n_series, n_resources))

    def record(self, i: int) -> ChoiceRecord:
        """Series ``i``'s errors, weights and counts (copies)."""
        return ChoiceRecord(self.err[i].copy(), self.weight[i].copy(), self.count[i].copy())

    def restore(self, i: int, record: ChoiceRecord) -> None:
        """Start series ``i`` from ``record`` (a previous run's ``record(i)``): its choice
        is made from the first forecast on, and new outcomes decay the old ones as usual."""
        err = np.asarray(record.err, dtype=np.float64)
        if err.shape != self.err.shape[1:]:
            raise ValueError(f"a record of shape {err.shape} does not fit {self.err.shape[1:]}")
        self.err[i] = err
        self.weight[i] = np.asarray(record.weight, dtype=np.float64)
        self.count[i] = np.asarray(record.count, dtype=np.int64)

    def update(self, idx: np.ndarray, issued: np.ndarray, actual: np.ndarray) -> None:
        """Record outcomes.

        idx: shape (n,) distinct series; issued: shape (n, R, k) what the first k <= K
        candidates forecast for the target (a NaN one scores as the model's); actual:
        shape (n, R) (NaN = not observed, skipped).
        """
        issued = self._filled(issued)
        actual = np.asarray(actual, dtype=np.float64)
        e = np.abs(actual[..., None] - issued)
        self._record(np.asarray(idx, dtype=np.int64), e, actual)

    def _record(self, idx: np.ndarray, loss: np.ndarray, actual: np.ndarray) -> None:
        """Decay and add ``loss`` (n, R, K) where ``actual`` (n, R) was observed and every
        candidate's loss is known."""
        ok = ~np.isnan(actual) & ~np.isnan(loss).any(axis=-1)  # (n, R)
        d = self.decay
        self.err[idx] = np.where(ok[..., None], d * self.err[idx] + np.nan_to_num(loss), self.err[idx])
        self.weight[idx] = np.where(ok, d * self.weight[idx] + 1.0, self.weight[idx])
        self.count[idx] += ok

    def _mean_error(self, idx: np.ndarray) -> np.ndarray:
        """(n, R, K): each candidate's decayed mean absolute error."""
        return self.err[idx] / np.maximum(self.weight[idx], 1e-12)[..., None]

    def choice(self, idx: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
        """Index of the candidate with the smallest recent error among those ``known``
        (n, R, K) now (default all; the model always): shape (n, R) ints (0 = the model;
        the model until ``min_outcomes``)."""
        idx = np.asarray(idx, dtype=np.int64)
        mean = np.where(self._known(known, idx), self._mean_error(idx), np.inf)
        best = np.argmin(mean, axis=-1)  # argmin takes the first on ties: the model
        return np.where(self.count[idx] >= self.min_outcomes, best, 0)

    def mix_weights(self, idx: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
        """The weight of each candidate in the point forecast, shape (n, R, K), summing to 1:
        ``exp(-sharpness * (E_k / E_best - 1))`` over the candidates ``known`` (n, R, K) now
        (default all; the model always), the model alone until ``min_outcomes``. Without a
        sharpness, all of it on ``choice``'s candidate."""
        idx = np.asarray(idx, dtype=np.int64)
        k_n = self.err.shape[-1]
        if self.sharpness is None:
            return (np.arange(k_n) == self.choice(idx, known)[..., None]).astype(np.float64)
        known = self._known(known, idx)
        mean = self._mean_error(idx)
        best = np.where(known, mean, np.inf).min(axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(best > 0, mean / best, np.where(mean > 0, np.inf, 1.0))
        w = np.where(known, np.exp(-self.sharpness * (rel - 1.0)), 0.0)
        w /= w.sum(axis=-1, keepdims=True)
        early = (self.count[idx] < self.min_outcomes)[..., None]
        return np.where(early, np.arange(k_n) == 0, w)

    def select(self, idx: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """candidates: shape (n, R, K) -> the point forecast, shape (n, R): the candidates
        weighted by ``mix_weights``. A NaN candidate (no last value, shadow, season or analog
        yet) has no weight."""
        c = self._checked(candidates)
        return (self.mix_weights(idx, ~np.isnan(c)) * np.nan_to_num(c)).sum(axis=-1)

    def _known(self, known: np.ndarray | None, idx: np.ndarray) -> np.ndarray:
        """(n, R, K) bool: ``known`` with the model always in; all where None."""
        shape = (len(idx), *self.err.shape[1:])
        out = np.ones(shape, dtype=bool) if known is None else np.array(np.broadcast_to(known, shape))
        out[..., 0] = True
        return out

    def _checked(self, candidates: np.ndarray) -> np.ndarray:
        c = np.asarray(candidates, dtype=np.float64)
        if c.shape[-1] != self.err.shape[-1]:
            raise ValueError(
                f"expected {self.err.shape[-1]} candidates {self.names}, got {c.shape[-1]}"
            )
        return c

    def _filled(self, candidates: np.ndarray) -> np.ndarray:
        """Candidates (..., K) with every NaN replaced by the model's value (index 0)."""
        c = self._checked(candidates)
        return np.where(np.isnan(c), c[..., :1], c)


def centre_on(q: np.ndarray, median: np.ndarray, quantiles: tuple[float, ...] = QUANTILES) -> np.ndarray:
    """The model's quantiles moved, all by the same amount, so that their median is the
    chosen ``median``: what the calibration then adjusts (and learns from), so the interval
    follows the point forecast and its coverage is the calibration's again.

    Why: the chosen median used to be clipped into the calibrated [q0.1, q0.9] of the
    model's own quantiles, so where a seasonal candidate or the last value was right and
    the model was not, the interval stayed on the model's guess and the median could not
    leave it. Centred before calibration, on the 100 held-out Bitbrains VMs (lead 900 s):
    median WAPE ratio 0.920 / 0.785 / 0.763 / 0.738 -> 0.908 / 0.782 / 0.705 / 0.689 (cpu /
    mem / disk / net), slack at 1 % 0.687 / 0.821 / 0.718 / 0.718 -> 0.645 / 0.797 / 0.695 /
    0.671, q0.9 coverage within 0.005 of before; the same direction on 40 validation VMs.

    q: shape (..., Q) non-decreasing; median: shape (...) (NaN = keep q as it is).
    Returns shape (..., Q), non-decreasing, possibly below 0 (the calibration clips at 0).
    """
    i50 = list(quantiles).index(0.5)
    q = np.asarray(q, dtype=np.float64)
    shift = np.asarray(median, dtype=np.float64) - q[..., i50]
    return q + np.where(np.isnan(shift), 0.0, shift)[..., None]


# The analog quantiles' share of the blend (``blend_analog``). Chosen on 40 validation
# Bitbrains VMs (lead 900 s; mem's slack at 1 % over the best baseline's, replaying the
# backtest's stored forecasts through the calibration and the allocation as shipped): the
# model's quantiles alone 0.824; with the 60 closest moments' quantiles at shares 0.5 /
# 0.75 / 1: 0.799 / 0.794 / 0.798; with the mean of the 15 and the 60 closest (shipped) at
# 0.75 / 0.85 / 1: 0.788 / 0.788 / 0.792.
ANALOG_WEIGHT = 0.75


def blend_analog(
    q: np.ndarray, analog: np.ndarray, weight: float = ANALOG_WEIGHT, quantiles: tuple[float, ...] = QUANTILES
) -> np.ndarray:
    """The quantiles the calibration gets: the model's, already on the chosen median
    (``centre_on``), averaged level by level with the analog quantiles
    (``prae.model.analogs``: of the outcomes of the 15 and the 60 past moments of the
    workload's own history most like now) moved onto the same median; the median stays the
    chosen one.

    Why: the model knows the shape of the next values on average over the VMs it was
    trained on; the moments of this workload's own week that looked like now say how far
    *its* next value strays, in which direction, and how often: a VM whose memory spikes
    every hour has outcomes that are either the base or a spike. Averaging quantiles
    level by level (Vincentization) keeps each source's shape in proportion to its share.

    q: shape (..., Q) non-decreasing; analog: shape (..., Q), NaN where the workload has
    no such history yet (the model's quantiles are kept there). weight: the analog's
    share, in [0, 1]. Returns shape (..., Q), non-decreasing.
    Worked number (levels 0.1 / 0.5 / 0.9, weight 0.75): model 8 / 10 / 12, analog
    5 / 6 / 14 -> analog moved onto 10: 9 / 10 / 18 -> 8.75 / 10 / 16.5. A convex mix of two
    non-decreasing sets is non-decreasing.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"analog weight must be in [0, 1], got {weight}")
    q = np.asarray(q, dtype=np.float64)
    analog = np.asarray(analog, dtype=np.float64)
    i50 = list(quantiles).index(0.5)
    med = q[..., i50 : i50 + 1]
    out = (1.0 - weight) * q + weight * centre_on(analog, med[..., 0], quantiles)  # non-decreasing
    # both are on the median: keep it exactly, and the levels around it on their side
    out[..., :i50] = np.minimum(out[..., :i50], med)
    out[..., i50] = med[..., 0]
    out[..., i50 + 1 :] = np.maximum(out[..., i50 + 1 :], med)
    return np.where(np.isnan(analog).any(axis=-1, keepdims=True), q, out)
