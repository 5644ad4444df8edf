"""Forecast and allocation metrics: pure functions over flat arrays of scored rows.

All pool the rows of every series (raw units), so large workloads weigh more, exactly as
they do in a cluster's bill.

    WAPE        sum |y - median| / sum |y|
    pinball     sum_q sum pinball_q(y, q_hat) / (Q * sum |y|)   (scale-free, like WAPE)
    coverage    share of rows with y <= q_tau (one-sided) or q0.1 <= y <= q0.9
    pit coverage  one-sided coverage where the actual ties the quantile, counted as a
                randomised PIT counts it (below)
    slack       share of the allocation not used: sum max(a - y, 0) / sum a
    violation   share of rows with y > a

``slack_at_violation`` sets each policy's margin so that it violates at the given rate
(post hoc, the same rule for every policy) and reports the slack that costs:
allocation' = max(a, floor) * (1 + m), floor = 1 % of the series' running mean usage
(so a zero forecast can still be raised by a margin).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prae.model.calibration import pinball


def wape(y: np.ndarray, point: np.ndarray) -> float:
    den = np.abs(y).sum()
    return float(np.abs(y - point).sum() / den) if den > 0 else float("nan")


def scaled_pinball(y: np.ndarray, q: np.ndarray, levels: tuple[float, ...]) -> float:
    """y: (n,), q: (n, Q)."""
    loss = pinball(y[:, None], q, np.asarray(levels)[None, :])
    den = np.abs(y).sum() * len(levels)
    return float(loss.sum() / den) if den > 0 else float("nan")


def coverage(y: np.ndarray, upper: np.ndarray, lower: np.ndarray | None = None) -> float:
    if y.size == 0:
        return float("nan")
    inside = y <= upper
    if lower is not None:
        inside &= y >= lower
    return float(inside.mean())


def pit_coverage(y: np.ndarray, q: np.ndarray, levels: tuple[float, ...], tau: float) -> float:
    """One-sided coverage of the level ``tau`` with ties spread as a randomised PIT does.

    y: (n,), q: (n, Q) at ``levels``. Why: a pinned VM's CPU or an idle network repeats a
    value exactly, and the forecast's tail is then that value at several levels (q0.5 =
    q0.9 = q0.95 = q0.99 = 6.9 cores). ``y <= q0.9`` counts every such row as covered, so
    it says 0.92 where the forecast is calibrated. The forecast's CDF through its knots is
    flat-topped there: it puts the actual anywhere between the lowest and the highest tied
    level (``lo``, ``hi``), and a row covers ``tau`` with probability
    ``(tau - lo) / (hi - lo)``, clipped to [0, 1] (1 where only ``tau`` ties). Rows with
    y < q_tau count 1, y > q_tau count 0; without ties this is ``coverage``.
    Worked number: y = q0.5 = q0.9 = q0.95 = q0.99 -> (0.9 - 0.5) / (0.99 - 0.5) = 0.82.
    """
    if y.size == 0:
        return float("nan")
    lv = np.asarray(levels, dtype=np.float64)
    k = list(levels).index(tau)
    eq = q == y[:, None]
    tie = eq[:, k]
    lo = lv[np.argmax(eq, axis=1)]
    hi = lv[len(lv) - 1 - np.argmax(eq[:, ::-1], axis=1)]
    width = np.where(hi > lo, hi - lo, 1.0)
    share = np.where(hi > lo, np.clip((tau - lo) / width, 0.0, 1.0), 1.0)
    return float(((y < q[:, k]).sum() + share[tie].sum()) / y.size)


def slack(y: np.ndarray, alloc: np.ndarray) -> float:
    total = alloc.sum()
    return float(np.maximum(alloc - y, 0.0).sum() / total) if total > 0 else float("nan")


def violation_rate(y: np.ndarray, alloc: np.ndarray) -> float:
    return float((y > alloc).mean()) if y.size else float("nan")


@dataclass(frozen=True)
class MarginResult:
    rate: float  # target violation rate
    margin: float  # m: allocation' = max(a, floor) * (1 + m)
    slack: float
    violation: float  # achieved (ties can leave it slightly below the target)


def slack_at_violation(
    y: np.ndarray, alloc: np.ndarray, floor: np.ndarray, rate: float
) -> MarginResult:
    """The margin that makes ``alloc`` violate at ``rate`` of rows, and its slack.

    y, alloc, floor: shape (n,). The needed factor is the (1 - rate) quantile of
    y / max(alloc, floor): with rate 1 % and 10 000 rows, the 100th largest ratio.
    Worked number: ratios 0.8, 0.9, 1.2, 2.0 and rate 25 % give factor 1.2, m = 0.2.
    """
    base = np.maximum(alloc, floor)
    if y.size == 0:
        return MarginResult(rate, float("nan"), float("nan"), float("nan"))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(base > 0, y / base, np.where(y > 0, np.inf, 0.0))
    k = int(np.floor(rate * y.size))  # rows allowed above
    srt = np.sort(ratio)
    factor = srt[y.size - k - 1] if k < y.size else 0.0
    if not np.isfinite(factor):
        return MarginResult(rate, float("inf"), float("nan"), float("nan"))
    a = base * factor
    return MarginResult(rate, float(factor - 1.0), slack(y, a), violation_rate(y, a))


def running_mean(y: np.ndarray) -> np.ndarray:
    """Causal expanding mean over observed rows. y: (S, T, R) -> (S, T, R) (NaN before any)."""
    ok = ~np.isnan(y)
    total = np.cumsum(np.where(ok, y, 0.0), axis=1)
    count = np.cumsum(ok, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
