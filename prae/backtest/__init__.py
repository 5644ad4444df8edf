"""``prae backtest``: replay traces through the live engine's predictor, calibrator and
allocation policy, online and causal, against baselines.

    runner.py     BacktestConfig, run_backtest (align, forecast+retrain, calibrate, allocate)
    baselines.py  reactive, max-1h, VPA, Autopilot, seasonal naive, oracle
    metrics.py    WAPE, pinball, coverage, slack at a fixed violation rate
    summary.py    the per-policy table and the goal check
    output.py     forecasts.parquet, baselines.parquet, summary files
    plots.py      PNGs (matplotlib optional)
    cli.py        add_arguments / run for the ``prae`` console script
"""

from prae.backtest.runner import BacktestConfig, BacktestResult, run_backtest

__all__ = ["BacktestConfig", "BacktestResult", "run_backtest"]
