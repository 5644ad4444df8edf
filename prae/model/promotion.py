"""Champion/challenger: a retrained model replaces the serving one only if it forecasts
better on rows neither was trained on.

Why: fine-tuning on a few minutes of one job's telemetry, or on a day of a trace, can make
the model worse (too few windows, a burst the next hours do not repeat), and a swap is
applied to every workload at once. So each retraining holds out the newest rows of every
series (``holdout_rows``), trains the challenger on the rows before them, and scores both
models on the same held-out windows, window by window. The challenger is promoted only if
its mean loss is lower by more than ``significance_z`` standard errors of the paired differences (and
by ``min_gain``, relative): a fine-tune that moves the loss by noise is not worth a swap
(on 100 Bitbrains VMs, the daily fine-tunes moved it by < 0.1 %, up and down). Windows
overlap in time, so the standard error is optimistic; 2 of them leave room for that. A
rejected challenger is kept on disk but never served, and the next retraining starts
again from the champion.

Pure: per-window losses in (``prae.model.training.window_losses``), verdict out.
``prae backtest`` (daily retraining) and the live engine's Ray Train retraining both
decide with :func:`compare` and :func:`judge`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PromotionRule:
    """holdout_share: share of each series' newest rows held out of training to judge on,
    at most ``max_holdout_rows`` (a day of 5-min steps in the backtest: the newest day is
    what tomorrow resembles most, and a larger holdout delays what the model learns).
    min_windows: fewer held-out windows than this and nothing is promoted (no evidence).
    min_gain: the challenger's loss must be <= champion's x (1 - min_gain).
    significance_z: the mean paired gain must exceed this many standard errors.
    always: promote every challenger without judging (the behaviour before this rule).
    """

    holdout_share: float = 0.2
    max_holdout_rows: int = 288
    min_windows: int = 16
    min_gain: float = 0.0
    significance_z: float = 2.0
    always: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout_share < 1.0:
            raise ValueError(f"holdout_share must be in (0, 1), got {self.holdout_share}")
        if self.max_holdout_rows < 1 or self.min_windows < 1:
            raise ValueError("max_holdout_rows and min_windows must be >= 1")
        if not 0.0 <= self.min_gain < 1.0:
            raise ValueError(f"min_gain must be in [0, 1), got {self.min_gain}")
        if not self.significance_z >= 0.0:
            raise ValueError(f"significance_z must be >= 0, got {self.significance_z}")

    def holdout_rows(self, n_rows: int) -> int:
        """Rows of a series of ``n_rows`` held out (0 when ``always``: nothing to judge)."""
        if self.always:
            return 0
        return min(self.max_holdout_rows, int(round(self.holdout_share * n_rows)))


@dataclass(frozen=True)
class Comparison:
    """Two models on the same held-out windows: mean losses, and the standard error of the
    mean of the paired differences (champion - challenger)."""

    champion_loss: float
    challenger_loss: float
    gain_se: float
    windows: int


def compare(champion: np.ndarray, challenger: np.ndarray) -> Comparison:
    """``champion``, ``challenger``: shape (M,) per-window losses on the same M windows.
    Windows where either is NaN are left out."""
    a, b = np.asarray(champion, dtype=np.float64), np.asarray(challenger, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"per-window losses must have the same shape (M,), got {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.size)
    if n == 0:
        return Comparison(math.nan, math.nan, math.nan, 0)
    se = float(np.std(a - b, ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return Comparison(float(a.mean()), float(b.mean()), se, n)


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    champion_loss: float = math.nan
    challenger_loss: float = math.nan
    gain_se: float = math.nan
    windows: int = 0

    def as_dict(self) -> dict[str, float | int | bool | str]:
        return {
            "promote": self.promote,
            "reason": self.reason,
            "champion_loss": self.champion_loss,
            "challenger_loss": self.challenger_loss,
            "gain_se": self.gain_se,
            "holdout_windows": self.windows,
        }


def judge(c: Comparison, rule: PromotionRule) -> Verdict:
    """Promote the challenger?"""

    def verdict(promote: bool, reason: str) -> Verdict:
        return Verdict(promote, reason, c.champion_loss, c.challenger_loss, c.gain_se, c.windows)

    if rule.always:
        return verdict(True, "always")
    if c.windows < rule.min_windows:
        return verdict(False, f"{c.windows} held-out windows, fewer than {rule.min_windows}")
    gain = c.champion_loss - c.challenger_loss
    bar = max(rule.significance_z * c.gain_se, rule.min_gain * c.champion_loss)
    if gain > bar:
        return verdict(True, f"gain {gain:.3g} > {bar:.3g}")
    return verdict(False, f"gain {gain:.3g} <= {bar:.3g} (significance_z={rule.significance_z:g}, min_gain={rule.min_gain:g})")
