"""The run report as one HTML page: the summary's table and, per workload, what it used, what
was forecast for it (median and 80 % interval, at the forecasts' target times) and what PRAE
held for it, for CPU and memory. Built from the feedback store (the source of truth) and the
run's ``summary.json``; ``prae run`` writes it next to them, ``prae report RUN_DIR`` again."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prae.engine.summary import RunSummary, column, format_table, rows_of_run
from prae.errors import PraeError
from prae.report.svg import Band, Line, line_chart
from prae.store.feedback import FeedbackStore

GIB = 1024**3
CHARTED = (("cpu", "CPU", "cores", 1.0), ("mem", "Memory", "GiB", GIB))  # resource, title, unit, divisor

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
pre { background: #f6f6f6; padding: 12px; overflow-x: auto; font-size: 12px; }
section { margin-top: 24px; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
"""


def _np(table: pa.Table, name: str) -> np.ndarray:
    return column(table, name).astype(float)


def _of(table: pa.Table, **equal: str) -> pa.Table:
    """The rows whose columns equal the given values."""
    for col, value in equal.items():
        if table.num_rows:
            table = table.filter(pc.equal(table.column(col), value))
    return table


def _columns(table: pa.Table, by: str, names: tuple[str, ...], div: float = 1.0) -> dict[str, np.ndarray]:
    """Columns as float arrays sorted by ``by`` (divided by ``div``, all but ``by``)."""
    if not table.num_rows:
        return {n: np.array([]) for n in (by, *names)}
    key = _np(table, by)
    order = np.argsort(key, kind="stable")
    return {by: key[order], **{n: _np(table, n)[order] / div for n in names}}


def workload_charts(name: str, telemetry: pa.Table, forecasts: pa.Table, t0: float) -> str:
    """CPU and memory charts of one workload: used (its live samples), forecast, held."""
    tel = _of(telemetry, workload=name, role="live")
    charts = []
    for resource, title, unit, div in CHARTED:
        used = _columns(tel, "ts", (resource,), div)
        fc = _columns(_of(forecasts, workload=name, resource=resource), "target_ts", ("q0.1", "q0.5", "q0.9", "reserved"), div)
        at = fc["target_ts"] - t0
        lines = [
            Line("used", used["ts"] - t0, used[resource]),
            Line("forecast median", at, fc["q0.5"]),
            Line("held by PRAE", at, np.nan_to_num(fc["reserved"]), step=True),
        ]
        charts.append(line_chart(f"{name}: {title} ({unit})", lines, Band("80 % interval", at, fc["q0.1"], fc["q0.9"])))
    return f'<section><h2>{html.escape(name)}</h2><div class="charts">{"".join(charts)}</div></section>'


def render(summary: RunSummary, store: FeedbackStore) -> str:
    """The page for a run: ``summary.extra['started_at']`` says which of the store's rows are
    this run's (a store is kept across runs)."""
    started = float(summary.extra.get("started_at", 0.0))
    telemetry = rows_of_run(store.read("telemetry"), started, "ts")
    forecasts = rows_of_run(store.read("forecasts"), started)
    names = [w.workload for w in summary.workloads]
    body = "".join(workload_charts(n, telemetry, forecasts, started) for n in names)
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>PRAE run report</title>"
        f"<style>{STYLE}</style></head><body><h1>PRAE run report</h1>"
        f"<p>Store: <code>{html.escape(str(store.root))}</code>. Charts: seconds since the run started; "
        "the forecast and what PRAE held are drawn at the time they were for.</p>"
        f"<pre id=\"summary\">{html.escape(format_table(summary))}</pre>{body}</body></html>"
    )


def write_report(run_dir: str | Path) -> Path:
    """``RUN_DIR/report.html`` from ``RUN_DIR/summary.json`` and the store it names."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    try:
        data = json.loads(path.read_text())
        summary = RunSummary.from_dict(data)
        store_root = data["extra"]["store"]
    except FileNotFoundError as exc:
        raise PraeError(f"{path}: not found. Fix: pass the folder `prae run` wrote summary.json into") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise PraeError(f"{path}: not a PRAE run summary ({exc!r}). Fix: run `prae run` again to write it") from exc
    out = run_dir / "report.html"
    out.write_text(render(summary, FeedbackStore(store_root)))
    return out
