"""PNG plots of a backtest (matplotlib, optional: without it the plots are skipped with a
message saying how to get them).

    slack_vs_violation.png  each policy's slack as its margin moves it along violation rates
    coverage.png            nominal vs empirical quantile coverage, calibrated and raw
    forecast_examples.png   two days of the largest series: actual, band, q0.99, allocation
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prae.backtest.baselines import BASELINES
from prae.backtest.metrics import running_mean, slack_at_violation
from prae.backtest.runner import BacktestResult
from prae.resources import QUANTILES, RESOURCES

CURVE_RATES: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def write_plots(result: BacktestResult, out: Path) -> list[Path] | str:
    """Write the PNGs; returns their paths, or a message if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plots skipped: matplotlib is not installed (pip install 'prae[plots]')"
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        _slack_curves(result, out, plt),
        _coverage(result, out, plt),
        _examples(result, out, plt),
    ]
    plt.close("all")
    return paths


def _slack_curves(result: BacktestResult, out: Path, plt) -> Path:  # type: ignore[no-untyped-def]
    scored = result.scored()
    floor = 0.01 * np.nan_to_num(running_mean(result.grid.y), nan=0.0)
    fig, axes = plt.subplots(1, len(RESOURCES), figsize=(4.2 * len(RESOURCES), 3.6))
    policies = {"prae": result.alloc[result.config.violation_target]}
    policies.update({b: np.nan_to_num(result.baselines[b]) for b in BASELINES if b != "oracle"})
    for r, ax in enumerate(np.atleast_1d(axes)):
        m = scored[:, :, r]
        if not m.any():
            ax.set_visible(False)
            continue
        y = result.actual[:, :, r][m]
        for name, alloc in policies.items():
            a = alloc[:, :, r][m]
            pts = [slack_at_violation(y, a, floor[:, :, r][m], rate) for rate in CURVE_RATES]
            ax.plot(
                [p.rate * 100 for p in pts],
                [p.slack for p in pts],
                marker="o",
                ms=3,
                lw=2.5 if name == "prae" else 1.2,
                label=name,
            )
        ax.set_xscale("log")
        ax.set_xlabel("violation rate (% of workload-steps)")
        ax.set_title(RESOURCES[r])
        ax.set_ylim(0, 1)
    np.atleast_1d(axes)[0].set_ylabel("slack (share of allocation unused)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "slack_vs_violation.png"
    fig.savefig(path, dpi=110)
    return path


def _coverage(result: BacktestResult, out: Path, plt) -> Path:  # type: ignore[no-untyped-def]
    scored = result.scored()
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for r, res in enumerate(RESOURCES):
        m = scored[:, :, r]
        if not m.any():
            continue
        y = result.actual[:, :, r][m]
        cal = [float((y <= result.calibrated[:, :, r, k][m]).mean()) for k in range(len(QUANTILES))]
        raw = [float((y <= result.raw[:, :, r, k][m]).mean()) for k in range(len(QUANTILES))]
        line = ax.plot(QUANTILES, cal, marker="o", label=f"{res} calibrated")[0]
        ax.plot(QUANTILES, raw, marker="x", ls=":", color=line.get_color(), label=f"{res} raw")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    ax.set_xlabel("nominal quantile level")
    ax.set_ylabel("empirical P(y <= q)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "coverage.png"
    fig.savefig(path, dpi=110)
    return path


def _examples(result: BacktestResult, out: Path, plt) -> Path:  # type: ignore[no-untyped-def]
    g = result.grid
    usage = np.nansum(np.where(result.scored()[:, :, 0], result.actual[:, :, 0], 0.0), axis=1)
    picks = list(np.argsort(-usage, kind="stable")[:2])
    fig, axes = plt.subplots(len(picks), 2, figsize=(11, 3.0 * len(picks)), squeeze=False)
    i10, i50, i90, i99 = (QUANTILES.index(q) for q in (0.1, 0.5, 0.9, 0.99))
    span = int(2 * 86400 / g.step_s)
    for row, s in enumerate(picks):
        for col, r in enumerate((0, 1)):
            ax = axes[row, col]
            m = result.emitted()[s, :, r]
            idx = np.flatnonzero(m)[-span:]
            if idx.size == 0:
                ax.set_visible(False)
                continue
            hours = (idx - idx[0] + result.lead_steps) * g.step_s / 3600.0
            q = result.calibrated[s, idx, r]
            ax.fill_between(hours, q[:, i10], q[:, i90], alpha=0.3, label="q0.1-q0.9")
            ax.plot(hours, q[:, i50], lw=1, label="median")
            ax.plot(hours, q[:, i99], lw=0.8, ls="--", label="q0.99")
            ax.plot(
                hours, result.alloc[result.config.violation_target][s, idx, r], lw=1, label="alloc"
            )
            ax.plot(hours, result.actual[s, idx, r], lw=1, color="black", label="actual")
            ax.set_title(f"{g.series_ids[s]} {RESOURCES[r]}", fontsize=9)
            ax.set_xlabel("hours (target time)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "forecast_examples.png"
    fig.savefig(path, dpi=110)
    return path
