"""Every benchmark's command line answers --help (a '%' in a help text once made
``bench/backtest_speed.py --help`` crash inside argparse)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
