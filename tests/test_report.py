"""The HTML run report: built from a store and summary.json, this run's rows only; bad input
named with its fix; rendered by a real headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from prae.engine.summary import RunSummary, WorkloadSummary
from prae.errors import PraeError
from prae.report.page import write_report
from prae.report.svg import nice_ticks
from prae.store.feedback import FeedbackStore

GIB = 1024**3
T0 = 1_000_000.0


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text of <pre>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.pre = ""
        self._in_pre = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_pre = self._in_pre or tag == "pre"

    def handle_endtag(self, tag):
        self._in_pre = self._in_pre and tag != "pre"

    def handle_data(self, data):
        if self._in_pre:
            self.pre += data


def workload(name: str) -> WorkloadSummary:
    return WorkloadSummary(
        workload=name, exit_code=0, forecasts=20, wape={"cpu": 0.1, "mem": 0.2, "disk": float("nan"), "net": 0.3},
        coverage80={"cpu": 0.8, "mem": 0.9, "disk": float("nan"), "net": 0.7}, reserved_cpu=2.0, used_cpu=1.5,
        reserved_mem=2 * GIB, used_mem=GIB, reservations=3, in_place_before_need=2, fallback_share=0.0,
        shadow_cost_ratio=0.05,
    )


def make_run(tmp_path: Path) -> Path:
    """Two workloads, 30 s of samples and forecasts, after 10 s of a previous run's rows."""
    store = FeedbackStore(tmp_path / "store")
    for name, level in (("etl", 1.0), ("replay", 2.0)):
        for start, n in ((T0 - 100.0, 10), (T0, 30)):  # a previous run, then this one
            ts = start + np.arange(n)
            store.append("telemetry", name, [
                {"ts": t, "role": role, "cpu": level + 0.1 * (i % 3), "mem": level * GIB, "disk": 0.0, "net": 0.0, "progress": i / n}
                for i, t in enumerate(ts) for role in ("live", "shadow")
            ])
            store.append("forecasts", name, [
                {"issued_at": t, "target_ts": t + 3, "resource": r, "q0.1": 0.8 * v, "q0.5": v, "q0.9": 1.2 * v, "q0.95": 1.3 * v,
                 "q0.99": 1.5 * v, "actual": v, "reserved": 1.3 * v, "source": "model", "model_version": "a", "shadow_used": False}
                for t in ts[:-3] for r, v in (("cpu", level), ("mem", level * GIB), ("disk", 0.0), ("net", 0.0))
            ])
    store.flush()
    summary = RunSummary((workload("etl"), workload("replay")), 1, ("a", "b"), 1,
                         {"store": str(store.root), "started_at": T0, "ticks": 30})
    (tmp_path / "summary.json").write_text(summary.to_json())
    return tmp_path


def test_the_report_charts_each_workloads_use_forecast_and_holding_from_this_run_only(tmp_path):
    page = write_report(make_run(tmp_path))
    assert page == tmp_path / "report.html"
    doc = Elements()
    doc.feed(page.read_text())
    svgs = [a for t, a in doc.tags if t == "svg"]
    assert [a["aria-label"] for a in svgs] == ["etl: CPU (cores)", "etl: Memory (GiB)", "replay: CPU (cores)", "replay: Memory (GiB)"]
    lines = [a["points"].split() for t, a in doc.tags if t == "polyline"]
    assert len(lines) == 4 * 3  # used, forecast median, held per chart
    assert len(lines[0]) == 30  # this run's live samples: not the previous run's, not the shadow's
    assert len(lines[1]) == 27  # its forecasts with a target inside the run
    xs = [float(p.split(",")[0]) for p in lines[0]]
    assert xs == sorted(xs) and 50 <= xs[0] < xs[-1] <= 640  # inside the plot, in time order
    assert len([t for t, _ in doc.tags if t == "polygon"]) == 4  # the 80 % bands
    assert "etl" in doc.pre and "hot swaps: 1" in doc.pre  # the summary's table


def test_the_report_names_what_is_wrong_with_its_input(tmp_path):
    with pytest.raises(PraeError, match="summary.json: not found. Fix"):
        write_report(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(PraeError, match="not a PRAE run summary.*Fix: run `prae run` again"):
        write_report(tmp_path)


def test_nice_ticks():
    assert nice_ticks(3.7) == [0, 1, 2, 3, 4]
    assert nice_ticks(0.0) == [0.0, 1.0]
    assert nice_ticks(9e9)[-1] >= 9e9


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_a_real_browser_renders_the_report(tmp_path):
    """Headless Chromium loads the page and draws it: the DOM it built has the charts, and
    the screenshot is not blank."""
    assert CHROMIUM, "no chromium on PATH: run `make test` (it installs Debian's package) or apt-get install chromium"
    page = write_report(make_run(tmp_path))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    doc = Elements()
    doc.feed(dom.stdout)
    assert len([t for t, _ in doc.tags if t == "svg"]) == 4 and len([t for t, _ in doc.tags if t == "polyline"]) == 12
    shot = tmp_path / "report.png"
    out = subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1400,1400", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and shot.exists(), out.stderr[-2000:]
    from PIL import Image  # matplotlib's dependency (the plots extra)

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1400, 1400)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.002  # drawn: lines and text, not an empty page
