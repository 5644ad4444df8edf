"""Online, per-workload calibration of forecast quantiles (conformal, adaptive).

For every workload, resource and quantile level tau the calibrator keeps a window of
recent normalised residuals ("scores")

    s = clip((y - q_tau) / d, -10, 10),   d = max(error, 0.1 * level)

where ``error`` is the workload's recent absolute error of the median, |y - q0.5|, as a
mean decaying with a half-life of ``ERROR_HALF_LIFE`` (3) outcomes, and ``level`` its
running mean |y| (so a perfect run of forecasts still has a width; the clip keeps one
burst after a long run of zeros from blowing up the next hundred forecasts). Until a
workload has ``ERROR_MIN_OUTCOMES`` (5) outcomes, and always with
``error_half_life=None``, ``error`` is the forecast's own width, max(q0.9 - q0.1,
0.1 * q0.5). The calibrated quantile is ``q_tau + d * Quantile(s, tau_eff)``: if the raw
q0.9 was too low 20 % of the time, the 0.9-quantile of the scores is > 0 and lifts it.
Levels in ``fixed`` (default: the median) are not adjusted: shifting the median by recent
residuals adds noise to the point forecast and buys no coverage.

Why the recent error: usage is calm for hours and then turbulent for hours (a VM's memory
swings between 0.5 and 2.5 GB for a while, then sits still), so the size of the last few
errors is the best guess of the next one's. Scores measured in those units are alike
across calm and turbulent hours, and the window's quantiles widen the interval within a
few steps of a change and narrow it again after. Worked number: errors of 4, 4, 4 then 1
give error = (1 + 0.794 * 4 + 0.794^2 * 4 + 0.794^3 * 4) / (1 + 0.794 + 0.794^2 +
0.794^3) = 2.97; if the 0.9-quantile of the scores is 0.5, the calibrated q0.9 is the
forecast's q0.9 + 1.49.

Chosen on 40 validation Bitbrains VMs (251-300, not multiples of 5; lead 900 s), slack at
a 1 % budget over the best baseline's, cpu / mem / disk / net:
- the forecast's width: 0.628 / 0.843 / 0.792 / 0.693;
- the recent error, half-life 3 outcomes: 0.619 / 0.824 / 0.773 / 0.674; 4: 0.620 /
  0.824 / 0.773 / 0.676; mem alone at 2 / 12 / 36 / 144: 0.823 / 0.829 / 0.833 / 0.834;
- not better: the root mean square error (0.620 / 0.827 / 0.779 / 0.684), the error plus
  a quarter of the width (0.618 / 0.829 / 0.777 / 0.679), the larger of the error and the
  width (mem 0.840), the geometric mean of the two (mem 0.834), a mix with a 48-outcome
  error (mem 0.825), the mean absolute one-step change of the series (mem 0.831).
q0.9 coverage stayed within 0.900-0.908. On the 100 held-out VMs, 0.649 / 0.799 / 0.696 /
0.670 -> 0.648 / 0.786 / 0.683 / 0.651, pinball 0.069 / 0.091 / 0.221 / 0.139 -> 0.069 /
0.087 / 0.212 / 0.135.

``tau_eff`` is adaptive conformal inference (Gibbs & Candes 2021): after each outcome
``tau_eff += gamma * (miss - (1 - tau))`` with miss = 1{y > issued q_tau}. It makes the
long-run miss rate of every level equal to 1 - tau per workload even when the residual
distribution drifts. Worked number: gamma = 0.01, tau = 0.9, a run of 10 misses in a row
raises tau_eff by 10 * 0.01 * 0.9 = 0.09, i.e. to ~0.99. ``tau_eff`` stays within
[tau - 4 (1 - tau), 1 - (1 - tau) / 4] (mirrored below the median), e.g. [0.95, 0.9975]
for q0.99: a burst of misses cannot make every later forecast the window's maximum.

``gamma`` defaults to 0 (plain rolling-window conformal): on held-out Bitbrains VMs it
gave the same 90 % coverage as gamma = 0.01 with realised 1 % shortfalls closer to the
budget; the adaptive level is there for drifting live workloads.

With n scores the adjustment is shrunk by n / (n + 10): a new workload starts with the
model's own quantiles and moves to the conformal ones as evidence arrives.

Each level keeps its own window, long enough that ``MIN_EXCEEDANCES`` (20) scores are
expected beyond it: ``max(window, ceil(20 / min(tau, 1 - tau)))`` (``level_windows``).
Worked number: window 200 gives 200 for q0.1 and q0.9, 400 for q0.95 and 2000 for
q0.99 -- with 200 scores the 0.99-quantile rests on the two largest residuals of the
last 200 steps, and one burst moves it for 200 steps. Chosen on 25 *training*
Bitbrains VMs (``prae backtest``, lead 900 s, slack at a 1 % budget over the best
baseline's, cpu / mem / disk / net): one window of 200: 0.809 / 0.854 / 0.843 / 0.933;
10 expected exceedances (q0.99: 1000): 0.804 / 0.841 / 0.835 / 0.928; 20: 0.781 /
0.835 / 0.831 / 0.926; 40: 0.786 / 0.839 / 0.830 / 0.927. q0.9 coverage does not move
(its window stays 200). The held-out figures are in the model card.

``CalibrationBank`` holds many workloads as arrays (vectorised; the backtest uses it for
hundreds of series); ``ConformalCalibrator`` is the same code for one workload.
"""

from __future__ import annotations

import math

import numpy as np

from prae.resources import QUANTILES, RESOURCES

_SHRINK_N0 = 10.0
_SCORE_CLIP = 10.0
_LEVEL_DECAY = 0.99  # running mean |y|: ~100-sample memory
MIN_EXCEEDANCES = 20.0
ERROR_HALF_LIFE = 3.0  # outcomes; the normaliser's recent error (module docstring)
ERROR_MIN_OUTCOMES = 5  # before these, the normaliser is the forecast's own width


def level_windows(
    quantiles: tuple[float, ...], window: int, min_exceedances: float = MIN_EXCEEDANCES
) -> tuple[int, ...]:
    """Scores kept per level: ``max(window, ceil(min_exceedances / min(tau, 1 - tau)))``.

    Worked number: quantiles (0.1, 0.5, 0.9, 0.95, 0.99), window 200 ->
    (200, 200, 200, 400, 2000).
    """
    out = []
    for tau in quantiles:
        tail = min(tau, 1.0 - tau)
        need = math.ceil(min_exceedances / tail - 1e-9) if tail > 0 else window
        out.append(max(int(window), int(need)))
    return tuple(out)


def pinball(y: np.ndarray, q: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """The pinball (quantile) loss of forecast ``q`` at level ``tau`` for outcome ``y``,
    elementwise with broadcasting: ``max(tau * (y - q), (tau - 1) * (y - q))``.
    Worked number: y = 10, q = 8, tau = 0.9 -> 1.8; q = 12 -> 0.2."""
    diff = np.asarray(y) - np.asarray(q)
    tau = np.asarray(tau)
    return np.maximum(tau * diff, (tau - 1.0) * diff)


def at_rank(srt: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Values at fractional ``rank`` (0-based, linear between neighbours) of windows sorted
    along the last axis. srt: (..., W) sorted, empty slots (NaN) last; rank: (..., k) with
    0 <= rank <= (valid values - 1). Returns (..., k).
    Worked number: srt [1, 3, 7, NaN], rank 1.5 -> 5."""
    lo = np.floor(rank).astype(np.int64)
    hi = np.minimum(lo + 1, srt.shape[-1] - 1)
    a = np.take_along_axis(srt, lo, axis=-1)
    b = np.take_along_axis(srt, hi, axis=-1)
    return np.where(rank > lo, a + (b - a) * (rank - lo), a)


class CalibrationBank:
    """Calibration state of ``n_series`` workloads.

    Arrays (S = series, R = resources, Q = quantiles):
        rings (S, R, levels, W) of normalised residuals, one per distinct window length W
        (NaN = empty)
        tau_eff (S, R, Q) adaptive levels; level (S, R) running mean |y|; error (S, R)
        decayed sum of |y - q0.5| (its weight follows from ``count``)
    ``window`` is the shortest window; ``windows`` (one per quantile) overrides
    ``level_windows(quantiles, window)``. ``error_half_life``: the normaliser's recent
    error (module docstring), in outcomes; None = the forecast's own width throughout.
    """

    def __init__(
        self,
        n_series: int,
        quantiles: tuple[float, ...] = QUANTILES,
        window: int = 200,
        gamma: float = 0.0,
        n_resources: int = len(RESOURCES),
        fixed: tuple[float, ...] = (0.5,),
        windows: tuple[int, ...] | None = None,
        error_half_life: float | None = ERROR_HALF_LIFE,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 0 <= gamma < 1:
            raise ValueError(f"gamma must be in [0, 1), got {gamma}")
        if error_half_life is not None and not error_half_life > 0:
            raise ValueError(
                f"error_half_life must be > 0 outcomes (or None for the forecast's width), got {error_half_life}"
            )
        qs = tuple(float(q) for q in quantiles)
        if 0.1 not in qs or 0.9 not in qs:
            raise ValueError(f"quantiles must include 0.1 and 0.9, got {qs}")
        self.quantiles = qs
        self._q = np.asarray(qs)
        self._i10, self._i90 = qs.index(0.1), qs.index(0.9)
        self._i50 = qs.index(0.5) if 0.5 in qs else None
        self._adjusted = np.array([q not in fixed for q in qs])
        q_arr = np.asarray(qs)
        up = q_arr >= 0.5
        self._tau_lo = np.where(up, q_arr - 4 * (1 - q_arr), q_arr / 4).clip(0.0, 1.0)
        self._tau_hi = np.where(up, 1 - (1 - q_arr) / 4, 5 * q_arr).clip(0.0, 1.0)
        self.window = int(window)
        self.windows = level_windows(qs, self.window) if windows is None else tuple(windows)
        if len(self.windows) != len(qs) or min(self.windows) < 1:
            raise ValueError(f"windows must be one int >= 1 per quantile {qs}, got {windows}")
        self.gamma = float(gamma)
        s, r, q = n_series, n_resources, len(qs)
        self._cols = np.flatnonzero(self._adjusted)
        w_cols = np.asarray([self.windows[c] for c in self._cols], dtype=np.int64)
        # one ring buffer of normalised residuals per window length: (positions in _cols,
        # window, ring (S, R, levels, window), NaN = empty)
        self._groups = [
            (
                np.flatnonzero(w_cols == w),
                int(w),
                np.full((s, r, int((w_cols == w).sum()), int(w)), np.nan, np.float32),
            )
            for w in sorted(set(w_cols.tolist()))
        ]
        self.count = np.zeros((s, r), np.int64)  # scores written per (series, resource)
        self.tau_eff = np.broadcast_to(self._q, (s, r, q)).astype(np.float64)
        self.level = np.zeros((s, r), np.float64)
        self.level_w = np.zeros((s, r), np.float64)
        # the recent error needs a median to measure it from
        self._error_decay = (
            None if error_half_life is None or self._i50 is None else 0.5 ** (1.0 / error_half_life)
        )
        self.error = np.zeros((s, r), np.float64)
        self.n_cov = np.zeros((s, r), np.int64)
        self.hits = np.zeros((s, r, q), np.int64)  # y <= calibrated q_tau
        self.inside80 = np.zeros((s, r), np.int64)

    # ------------------------------------------------------------------ internals
    def _width(self, idx: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Normaliser d. predicted (n, ..., R, Q) -> (n, ..., R)."""
        width = predicted[..., self._i90] - predicted[..., self._i10]
        if self._i50 is not None:
            width = np.maximum(width, 0.1 * np.abs(predicted[..., self._i50]))

        def rows(a: np.ndarray) -> np.ndarray:  # (n, R) -> broadcast against (n, ..., R)
            return a.reshape(a.shape[:1] + (1,) * (width.ndim - 2) + a.shape[1:])

        lvl = rows(self.level[idx] / np.maximum(self.level_w[idx], 1e-12))
        if self._error_decay is not None:
            n = self.count[idx]  # outcomes in the decayed sum: its weight is sum(decay ** i), i < n
            weight = (1.0 - self._error_decay**n) / (1.0 - self._error_decay)
            error = self.error[idx] / np.maximum(weight, 1e-12)
            width = np.where(rows(n >= ERROR_MIN_OUTCOMES), rows(error), width)
        return np.maximum(np.maximum(width, 0.1 * lvl), 1e-30)

    def _offsets(self, idx: np.ndarray) -> np.ndarray:
        """Conformal offsets Quantile(scores, tau_eff), shrunk: (n, R, Q)."""
        off = np.zeros(idx.shape + self.tau_eff.shape[1:])
        for pos, w, ring in self._groups:
            cols = self._cols[pos]
            n_valid = np.minimum(self.count[idx], w)[..., None]  # (n, R, 1)
            rank = self.tau_eff[idx][:, :, cols] * (n_valid + 1) - 1  # finite-sample conformal rank
            top = np.maximum(n_valid - 1, 0)
            rank = np.clip(rank, 0, top)
            srt = ring[idx]  # a copy, sorted in place (NaN = empty sorts last)
            srt.sort(axis=-1)
            part = np.where(n_valid > 0, at_rank(srt, rank[..., None])[..., 0], 0.0)
            part *= n_valid / (n_valid + _SHRINK_N0)
            off[:, :, cols] = np.nan_to_num(part, nan=0.0)
        return off

    # ------------------------------------------------------------------ public
    def adjust(self, idx: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Calibrated quantiles, >= 0 and non-decreasing along Q.

        idx: shape (n,) series indices; predicted: shape (n, ..., R, Q) raw units.
        """
        idx = np.asarray(idx, dtype=np.int64)
        predicted = np.asarray(predicted, dtype=np.float64)
        off = self._offsets(idx)  # (n, R, Q)
        off = off.reshape(off.shape[:1] + (1,) * (predicted.ndim - 3) + off.shape[1:])
        d = self._width(idx, predicted)[..., None]
        out = np.maximum(predicted + d * off, 0.0)
        if self._i50 is not None and not self._adjusted[self._i50]:
            # a fixed median stays put: lower levels may not cross it, upper ones not dip under
            med = out[..., self._i50 : self._i50 + 1]
            out[..., : self._i50] = np.minimum(out[..., : self._i50], med)
            out[..., self._i50 + 1 :] = np.maximum(out[..., self._i50 + 1 :], med)
        return np.maximum.accumulate(out, axis=-1)

    def update(
        self,
        idx: np.ndarray,
        predicted: np.ndarray,
        actual: np.ndarray,
        issued: np.ndarray | None = None,
    ) -> None:
        """Record outcomes.

        idx: shape (n,) distinct series indices; predicted: shape (n, R, Q) the model's
        raw forecast for the target; actual: shape (n, R) (NaN = not observed, skipped);
        issued: shape (n, R, Q) the calibrated forecast that was issued for that target
        (default: what ``adjust`` gives now). Coverage and the adaptive level use it.
        """
        idx = np.asarray(idx, dtype=np.int64)
        predicted = np.asarray(predicted, dtype=np.float64)
        actual = np.asarray(actual, dtype=np.float64)
        if issued is None:
            issued = self.adjust(idx, predicted)
        ok = ~np.isnan(actual) & ~np.isnan(predicted).any(axis=-1)  # (n, R)
        if not ok.any():
            return
        y = np.where(ok, actual, 0.0)
        # d first, from the level and recent error known before this outcome
        d = self._width(idx, predicted)  # (n, R)
        score = np.clip((y[..., None] - predicted) / d[..., None], -_SCORE_CLIP, _SCORE_CLIP)

        miss = y[..., None] > issued + 1e-12 * np.abs(issued)
        target_miss = 1.0 - self._q
        new_tau = self.tau_eff[idx] + self.gamma * (miss - target_miss)
        new_tau = np.clip(new_tau, self._tau_lo, self._tau_hi)
        self.tau_eff[idx] = np.where(ok[..., None], new_tau, self.tau_eff[idx])

        self.n_cov[idx] += ok
        self.hits[idx] += (~miss & ok[..., None]).astype(np.int64)
        inside = (y >= issued[..., self._i10] - 1e-12) & ~miss[..., self._i90]
        self.inside80[idx] += (inside & ok).astype(np.int64)

        ii, rr = np.nonzero(ok)
        s_idx = idx[ii]
        slot = self.count[s_idx, rr]
        new = score[ii, rr][:, self._cols].astype(np.float32)  # (m, A)
        for pos, w, ring in self._groups:
            ring[s_idx, rr, :, slot % w] = new[:, pos]
        self.count[s_idx, rr] += 1
        self.level[idx] = np.where(ok, _LEVEL_DECAY * self.level[idx] + np.abs(y), self.level[idx])
        self.level_w[idx] = np.where(ok, _LEVEL_DECAY * self.level_w[idx] + 1.0, self.level_w[idx])
        if self._error_decay is not None:  # rows not ok keep theirs (their count did not move)
            abs_error = np.abs(y - predicted[..., self._i50])
            self.error[idx] = np.where(ok, self._error_decay * self.error[idx] + abs_error, self.error[idx])

    def coverage(self, idx: np.ndarray | None = None) -> dict[str, float]:
        """Empirical coverage so far, pooled over ``idx`` (default: all series).

        Keys per resource r: ``"{r}.interval80"`` (y in [q0.1, q0.9]) and
        ``"{r}.q{tau}"`` (y <= q_tau) for every quantile level; NaN before any outcome.
        """
        sel = slice(None) if idx is None else np.asarray(idx, dtype=np.int64)
        n = self.n_cov[sel].sum(axis=0)  # (R,)
        hits = self.hits[sel].sum(axis=0)  # (R, Q)
        inside = self.inside80[sel].sum(axis=0)
        out: dict[str, float] = {}
        for r, name in enumerate(RESOURCES[: n.shape[0]]):
            denom = float(n[r]) if n[r] else float("nan")
            out[f"{name}.interval80"] = float(inside[r]) / denom
            for k, q in enumerate(self.quantiles):
                out[f"{name}.q{q:g}"] = float(hits[r, k]) / denom
        return out


class ConformalCalibrator:
    """Online calibration for one workload (a one-series ``CalibrationBank``).

    update(predicted (R, Q), actual (R,)); adjust(predicted (..., R, Q)) -> calibrated,
    same shape, monotone along Q; coverage() -> see ``CalibrationBank.coverage``.
    """

    def __init__(
        self,
        quantiles: tuple[float, ...] = QUANTILES,
        window: int = 200,
        gamma: float = 0.0,
        fixed: tuple[float, ...] = (0.5,),
        windows: tuple[int, ...] | None = None,
        error_half_life: float | None = ERROR_HALF_LIFE,
    ) -> None:
        self._bank = CalibrationBank(
            1,
            quantiles=quantiles,
            window=window,
            gamma=gamma,
            fixed=fixed,
            windows=windows,
            error_half_life=error_half_life,
        )
        self._idx = np.zeros(1, np.int64)

    @property
    def n_outcomes(self) -> int:
        return int(self._bank.n_cov.max())

    def update(
        self, predicted: np.ndarray, actual: np.ndarray, issued: np.ndarray | None = None
    ) -> None:
        """predicted: shape (R, Q) raw forecast for one target; actual: shape (R,);
        issued: shape (R, Q) the calibrated forecast that was acted on (optional)."""
        self._bank.update(
            self._idx,
            np.asarray(predicted)[None],
            np.asarray(actual)[None],
            None if issued is None else np.asarray(issued)[None],
        )

    def adjust(self, predicted: np.ndarray) -> np.ndarray:
        """predicted: shape (..., R, Q) -> calibrated, same shape, >= 0, monotone in Q."""
        p = np.asarray(predicted, dtype=np.float64)
        return self._bank.adjust(self._idx, p[None])[0]

    def coverage(self) -> dict[str, float]:
        return self._bank.coverage()
