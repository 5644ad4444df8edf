"""Score a BacktestResult: one row per (policy, resource), and the goal check.

Policies:
    prae            calibrated median (WAPE), calibrated quantiles (pinball, coverage),
                    violation-budget allocation run at each rate (slack)
    prae_uncalibrated  the model's own quantiles (before conformal adjustment)
    prae_q0.99      calibrated q0.99 for every workload, one margin for all (shows what
                    the budget policy adds over one margin)
    baselines       last_value, max_1h, vpa, autopilot, seasonal_naive, oracle: their
                    value is both the point forecast (WAPE) and the allocation (slack)
Every policy is scored on the same rows; slack at rate r uses the margin that makes
that policy violate at r (metrics.slack_at_violation).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from prae.backtest.baselines import BASELINES
from prae.backtest.metrics import (
    coverage,
    pit_coverage,
    running_mean,
    scaled_pinball,
    slack,
    slack_at_violation,
    violation_rate,
    wape,
)
from prae.backtest.runner import BacktestResult
from prae.resources import QUANTILES, RESOURCES

RATES: tuple[float, ...] = (0.01, 0.05)
_I50 = QUANTILES.index(0.5)
_I90 = QUANTILES.index(0.9)
_I10 = QUANTILES.index(0.1)
_I99 = QUANTILES.index(0.99)


def _pct(rate: float) -> str:
    return f"{rate * 100:g}%"


def _quantile_row(policy: str, res: str, y: np.ndarray, q: np.ndarray) -> dict[str, object]:
    """WAPE of the median, pinball, coverage. y: (n,), q: (n, Q)."""
    row: dict[str, object] = {
        "policy": policy,
        "resource": res,
        "n": int(y.size),
        "wape": wape(y, q[:, _I50]),
        "pinball": scaled_pinball(y, q, QUANTILES),
        "cov_80": coverage(y, q[:, _I90], q[:, _I10]),
    }
    for k, tau in enumerate(QUANTILES):
        row[f"cov_q{tau:g}"] = coverage(y, q[:, k])
    row["tie_q0.9"] = float((y == q[:, _I90]).mean()) if y.size else math.nan
    row["pit_cov_q0.9"] = pit_coverage(y, q, QUANTILES, 0.9)
    return row


def score(result: BacktestResult, rates: tuple[float, ...] = RATES) -> pd.DataFrame:
    """One row per (policy, resource) with n, wape, pinball, coverage and slack columns."""
    scored = result.scored()
    y_all = result.actual
    floor_all = 0.01 * np.nan_to_num(running_mean(result.grid.y), nan=0.0)
    rows: list[dict[str, object]] = []
    for r, res in enumerate(RESOURCES):
        m = scored[:, :, r]
        if not m.any():
            continue
        y = y_all[:, :, r][m]
        floor = floor_all[:, :, r][m]
        cal = result.calibrated[:, :, r][m].astype(np.float64)
        raw = result.raw[:, :, r][m].astype(np.float64)

        row = _quantile_row("prae", res, y, cal)
        target = result.config.violation_target
        own = result.alloc[target][:, :, r][m]
        row["own_violation"] = violation_rate(y, own)
        row["own_slack"] = slack(y, own)
        for rate in rates:
            alloc = result.alloc.get(rate, own)
            mr = slack_at_violation(
                y, alloc[:, :, r][m] if rate in result.alloc else own, floor, rate
            )
            row[f"slack@{_pct(rate)}"], row[f"margin@{_pct(rate)}"] = mr.slack, mr.margin
        rows.append(row)

        row = _quantile_row("prae_uncalibrated", res, y, raw)
        for rate in rates:
            mr = slack_at_violation(y, raw[:, _I99], floor, rate)
            row[f"slack@{_pct(rate)}"], row[f"margin@{_pct(rate)}"] = mr.slack, mr.margin
        rows.append(row)

        row = {
            "policy": "prae_q0.99",
            "resource": res,
            "n": int(y.size),
            "wape": wape(y, cal[:, _I50]),
        }
        for rate in rates:
            mr = slack_at_violation(y, cal[:, _I99], floor, rate)
            row[f"slack@{_pct(rate)}"], row[f"margin@{_pct(rate)}"] = mr.slack, mr.margin
        rows.append(row)

        for name in BASELINES:
            v = result.baselines[name][:, :, r][m]
            v = np.nan_to_num(v, nan=0.0)
            row = {"policy": name, "resource": res, "n": int(y.size), "wape": wape(y, v)}
            for rate in rates:
                mr = slack_at_violation(y, v, floor, rate)
                row[f"slack@{_pct(rate)}"], row[f"margin@{_pct(rate)}"] = mr.slack, mr.margin
            rows.append(row)
    return pd.DataFrame(rows)


def goals(table: pd.DataFrame) -> pd.DataFrame:
    """Per resource: PRAE vs the best baseline (oracle excluded).

    Goals: median WAPE <= 0.9x the best baseline's; slack at 1 % violations <= 0.75x
    the best baseline's; the 90 % interval covers 88-92 %. Coverage is checked on
    ``pit_cov_q0.9`` (ties of the actual with q0.9 spread over the tied levels, see
    ``metrics.pit_coverage``); ``cov_q0.9`` (y <= q0.9) and the share of ties are shown
    beside it.
    """
    out = []
    base = [b for b in BASELINES if b != "oracle"]
    for res in RESOURCES:
        t = table[table.resource == res].set_index("policy")
        if "prae" not in t.index:
            continue
        p = t.loc["prae"]
        bw = t.loc[base, "wape"].astype(float)
        bs = (
            t.loc[base, "slack@1%"].astype(float)
            if "slack@1%" in t.columns
            else pd.Series(dtype=float)
        )
        best_w = bw.idxmin() if bw.notna().any() else None
        best_s = bs.idxmin() if bs.notna().any() else None
        wr = float(p["wape"]) / float(bw[best_w]) if best_w else math.nan
        sr = (
            float(p["slack@1%"]) / float(bs[best_s])
            if best_s and "slack@1%" in t.columns
            else math.nan
        )
        cov = float(p["pit_cov_q0.9"])
        out.append(
            {
                "resource": res,
                "wape": float(p["wape"]),
                "best_baseline_wape": best_w,
                "wape_ratio": wr,
                "wape_ok": wr <= 0.9,
                "slack@1%": float(p.get("slack@1%", math.nan)),
                "best_baseline_slack": best_s,
                "slack_ratio": sr,
                "slack_ok": sr <= 0.75,
                "cov_q0.9": float(p["cov_q0.9"]),
                "tie_q0.9": float(p["tie_q0.9"]),
                "pit_cov_q0.9": cov,
                "cov_ok": 0.88 <= cov <= 0.92,
            }
        )
    return pd.DataFrame(out)


def format_tables(table: pd.DataFrame, goal: pd.DataFrame) -> str:
    """Plain-text summary for stdout and summary.txt."""
    cols = [
        c
        for c in [
            "policy",
            "resource",
            "wape",
            "pinball",
            "cov_80",
            "cov_q0.9",
            "pit_cov_q0.9",
            "cov_q0.99",
            "slack@1%",
            "slack@5%",
            "own_violation",
            "own_slack",
        ]
        if c in table.columns
    ]
    lines = [
        "Per policy and resource (pooled over series; slack at the margin that hits the rate):",
        "",
    ]
    with pd.option_context(
        "display.width", 200, "display.max_columns", 30, "display.max_rows", 500
    ):
        lines.append(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        lines += ["", "Goals (PRAE vs best baseline, oracle excluded):", ""]
        lines.append(goal.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return "\n".join(lines)
