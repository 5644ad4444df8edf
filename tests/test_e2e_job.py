"""End to end as a user runs it: `ray start --head`, then `ray job submit -- prae run configs/demo.yaml`.

Starts its own head node on free ports in its own temp dir and stops exactly those
processes afterwards (never `ray stop`, which would kill every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prae.engine.tick_timing import timing_text
from prae.testing.forecast_timeline import forecast_timelines, shortfalls
from prae.testing.local_cluster import start_head

ROOT = Path(__file__).resolve().parents[1]
TRACES = Path(os.environ.get("PRAE_TRACES_DIR") or ROOT.parent / "shared" / "traces").resolve()
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head():
    h = start_head(num_cpus=8)
    try:
        yield h
    finally:
        stopped = h.stop()
        assert stopped > 0
        assert h.processes() == []  # everything we started is gone
        shutil.rmtree(h.temp_dir, ignore_errors=True)


def test_job_submit_runs_the_demo(head, tmp_path):
    ray_bin = Path(sys.executable).parent / "ray"
    store = tmp_path / "store"
    cmd = [
        str(ray_bin), "job", "submit",
        "--address", head.dashboard_url,
        "--working-dir", str(ROOT),
        # The job runs from a copy of the working dir: tell the replay workload where the
        # shared traces are, as a user would on a cluster.
        "--runtime-env-json", json.dumps({"env_vars": {"PRAE_TRACES_DIR": str(TRACES)}}),
        "--",
        "prae", "run", "configs/demo.yaml", "--store-dir", str(store),
    ]
    proc = subprocess.run(cmd, env=head.env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "succeeded" in out, out[-3000:]
    assert "hot swaps:" in out  # the summary table reached the job's log
    # the summary file and the store the job wrote (one machine: a shared filesystem)
    summary = json.loads((tmp_path / "summary.json").read_text())
    names = {w["workload"] for w in summary["workloads"]}
    assert names == {"etl-orders", "replay-vm", "stages-job"}
    assert all(w["exit_code"] == 0 for w in summary["workloads"])
    # Each workload was forecast through its run: a tick issues one forecast per running
    # workload, and one resolves once its target (5 s ahead) has a live sample. How long a
    # run lasts depends on the machine (the ETL took 57 s here and ~24 s on a CI machine),
    # so the count is held against the run's own live samples (see ``shortfalls``).
    timing = summary["extra"]["tick_timing"]
    assert timing["ticks"] == summary["extra"]["ticks"] > 0, timing
    timelines = forecast_timelines(store)
    assert set(timelines) == names
    short = shortfalls(timelines, lead_steps=5)
    assert not short, (short, timing_text(timing), out[-1500:])
    counts = {w["workload"]: w["forecasts"] for w in summary["workloads"]}
    assert counts == {n: tl.resolved for n, tl in timelines.items()}  # the summary counts the same
    job = next(w for w in summary["workloads"] if w["workload"] == "stages-job")["live_result"]
    assert job["tasks"] > 0 and job["in_reservation"] > 0, job  # its tasks ran in what PRAE reserved
    # the HTML report beside it: the summary's table and two charts per workload
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") == 2 * len(names) and "hot swaps:" in page
    assert all(f'aria-label="{n}: CPU (cores)"' in page for n in names)
    assert (store / "telemetry").is_dir() and list((store / "forecasts").glob("workload=*/*.parquet"))
