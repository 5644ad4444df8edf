"""Every benchmark's command line answers --help (a '%' in a help text once made
``bench/backtest_speed.py --help`` crash inside argparse)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = sorted((Path(__file__).resolve().parents[1] / "bench").glob("*.py"))


def test_there_are_benchmarks() -> None:
    assert len(BENCH) >= 5


@pytest.mark.parametrize("script", BENCH, ids=lambda p: p.name)
def test_bench_help(script: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout


def test_shadow_ablation_scores_a_run_through_the_engines_point_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench/shadow_ablation.py``'s scoring calls the engine's own pieces
    (``history_track``, ``point_candidates``, ``MedianSelector``); a change to one of
    their signatures once broke ``--reuse`` with no test failing. A run whose CPU sits at
    2.0 with a model median of 3.0: once outcomes resolve, the chosen forecast is the last
    value's 2.0, with and without a shadow."""
    import importlib.util

    path = next(p for p in BENCH if p.name == "shadow_ablation.py")
    spec = importlib.util.spec_from_file_location("shadow_ablation_under_test", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look their module up
    monkeypatch.setattr(sys, "path", [*sys.path])  # it puts the repository first on the path
    spec.loader.exec_module(bench)
    n, h = 120, 3
    live = [[2.0, 1.0, 1.0, 1.0]] * n
    run = bench.Run(
        kind="etl",
        variant="A",
        live_ts=[float(t) for t in range(n)],
        live=live,
        live_progress=[t / (n - 1) for t in range(n)],
        live_phase=["load"] * n,
        shadow_ts=[0.2 * t for t in range(n)],
        shadow=[[0.1, 0.05, 0.05, 0.05]] * n,
        shadow_progress=[t / (n - 1) for t in range(n)],
        live_cpu_s=1.0,
        shadow_cpu_s=0.1,
        live_mem_bs=1.0,
        shadow_mem_bs=0.1,
        live_exit=0,
        shadow_exit=0,
    )
    steps = list(range(20, n - h))
    q50 = np.full((len(steps), h, 4), 3.0)
    for with_shadow in (False, True):
        got = bench.chosen_points(q50, run, steps, h, with_shadow, half_life=20.0)
        assert got.shape == q50.shape and np.isfinite(got).all()
        assert got[0, 0, 0] == 3.0  # nothing resolved yet: the model's median
        np.testing.assert_allclose(got[-10:, :, 0], 2.0, atol=1e-6)
