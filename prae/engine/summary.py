"""The end-of-run report, computed from the feedback store (the source of truth), not memory.

Per workload: forecast error (WAPE of the median), 80 % interval coverage, reserved vs.
used, and how many reservations were in place before the demand they were made for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa

from prae.engine.tick_timing import timing_text
from prae.json_out import strict_dumps
from prae.resources import RESOURCES


@dataclass(frozen=True)
class WorkloadSummary:
    workload: str
    exit_code: int | None
    forecasts: int  # resolved (workload, target) forecasts
    wape: Mapping[str, float]  # resource -> sum|q0.5 - actual| / sum|actual|
    coverage80: Mapping[str, float]  # resource -> share of actuals inside [q0.1, q0.9]
    reserved_cpu: float  # mean cores held at target times
    used_cpu: float  # mean cores used at target times
    reserved_mem: float
    used_mem: float
    reservations: int
    in_place_before_need: int
    fallback_share: float  # forecasts made by the rule because Serve did not answer
    shadow_cost_ratio: float  # shadow CPU-seconds / live CPU-seconds
    shadow_error: str | None = None
    live_result: Mapping[str, Any] | None = None  # what the live run returned (kind-specific)


@dataclass(frozen=True)
class RunSummary:
    workloads: tuple[WorkloadSummary, ...]
    hot_swaps: int
    model_versions: tuple[str, ...]
    predictor_replicas: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return strict_dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSummary:
        """Back from ``to_json``'s data (``null`` figures come back as NaN)."""
        floats = [f.name for f in fields(WorkloadSummary) if f.type == "float"]  # JSON null -> NaN

        def nan(v: Any) -> Any:
            return math.nan if v is None else v

        workloads = tuple(
            WorkloadSummary(**{
                **w,
                **{k: nan(w[k]) for k in floats},
                "wape": {k: nan(v) for k, v in w["wape"].items()},
                "coverage80": {k: nan(v) for k, v in w["coverage80"].items()},
            })
            for w in d["workloads"]
        )
        return cls(workloads, d["hot_swaps"], tuple(d["model_versions"]), d["predictor_replicas"], d.get("extra", {}))


def column(table: pa.Table, name: str) -> np.ndarray:
    """A column as a numpy array (the store's tables: no nested types)."""
    return table.column(name).to_numpy(zero_copy_only=False)


def rows_of_run(table: pa.Table, started_at: float, time_column: str = "issued_at") -> pa.Table:
    """The rows a run wrote (``time_column`` at or after its start): a store is kept across
    runs (it is what retraining learns from), so a report of one run must not count the
    forecasts or reservations of the runs before it."""
    if not table.num_rows:
        return table
    return table.filter(column(table, time_column).astype(float) >= started_at)


def summarise_workload(
    workload: str,
    forecasts: pa.Table,
    reservations: Sequence[Mapping[str, Any]],
    exit_code: int | None,
    live_cost: float,
    shadow_cost: float,
    shadow_error: str | None = None,
    live_result: Mapping[str, Any] | None = None,
) -> WorkloadSummary:
    """``forecasts``: this workload's rows of the store's forecasts table."""
    wape, cov = {}, {}
    resource = column(forecasts, "resource") if forecasts.num_rows else np.array([])
    actual_all = column(forecasts, "actual").astype(float) if forecasts.num_rows else np.array([])
    means: dict[str, tuple[float, float]] = {}
    n_resolved = 0
    for res in RESOURCES:
        m = (resource == res) & np.isfinite(actual_all)
        a = actual_all[m]
        med = column(forecasts, "q0.5").astype(float)[m] if forecasts.num_rows else a
        lo = column(forecasts, "q0.1").astype(float)[m] if forecasts.num_rows else a
        hi = column(forecasts, "q0.9").astype(float)[m] if forecasts.num_rows else a
        denom = np.abs(a).sum()
        wape[res] = float(np.abs(med - a).sum() / denom) if denom > 0 else math.nan
        cov[res] = float(((a >= lo) & (a <= hi)).mean()) if len(a) else math.nan
        n_resolved = max(n_resolved, int(m.sum()))
        if res in ("cpu", "mem") and len(a):
            reserved = column(forecasts, "reserved").astype(float)[m]
            means[res] = (float(np.nan_to_num(reserved).mean()), float(a.mean()))
    sources = column(forecasts, "source") if forecasts.num_rows else np.array([])
    return WorkloadSummary(
        workload=workload,
        exit_code=exit_code,
        forecasts=n_resolved,
        wape=wape,
        coverage80=cov,
        reserved_cpu=means.get("cpu", (0.0, 0.0))[0],
        used_cpu=means.get("cpu", (0.0, 0.0))[1],
        reserved_mem=means.get("mem", (0.0, 0.0))[0],
        used_mem=means.get("mem", (0.0, 0.0))[1],
        reservations=len(reservations),
        in_place_before_need=sum(1 for r in reservations if r.get("in_place_before_need")),
        fallback_share=float((sources == "fallback").mean()) if len(sources) else 0.0,
        shadow_cost_ratio=shadow_cost / live_cost if live_cost > 0 else math.nan,
        shadow_error=shadow_error,
        live_result=live_result,
    )


def _verdict_text(result: Mapping[str, Any]) -> str:
    """One retraining's verdict: its held-out losses, or why there were none to compare."""
    v = result["verdict"]
    said = "yes" if result["promote"] else "no"
    if math.isfinite(v["challenger_loss"]) and math.isfinite(v["champion_loss"]):
        return f"{said}: {v['challenger_loss']:.3f} vs {v['champion_loss']:.3f} held out"
    return f"{said}: {v['reason']}"


def format_table(summary: RunSummary) -> str:
    gib = 1024**3
    head = (
        f"{'workload':<16} {'exit':>4} {'fcsts':>5} {'WAPE cpu':>8} {'mem':>6} {'disk':>6} {'net':>6} "
        f"{'cov80 cpu':>9} {'mem':>5} {'res/used cpu':>13} {'res/used GiB':>13} {'resv':>4} {'early':>5} {'shadow$':>7}"
    )
    lines = [head, "-" * len(head)]
    for w in summary.workloads:
        def f(x: float, fmt: str = "{:.2f}") -> str:
            return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)

        lines.append(
            f"{w.workload:<16} {str(w.exit_code):>4} {w.forecasts:>5} {f(w.wape['cpu']):>8} {f(w.wape['mem']):>6} "
            f"{f(w.wape['disk']):>6} {f(w.wape['net']):>6} {f(w.coverage80['cpu'], '{:.0%}'):>9} "
            f"{f(w.coverage80['mem'], '{:.0%}'):>5} "
            f"{f(w.reserved_cpu) + '/' + f(w.used_cpu):>13} "
            f"{f(w.reserved_mem / gib) + '/' + f(w.used_mem / gib):>13} "
            f"{w.reservations:>4} {w.in_place_before_need:>5} {f(w.shadow_cost_ratio, '{:.0%}'):>7}"
        )
    lines.append(
        f"hot swaps: {summary.hot_swaps}; model versions: {', '.join(summary.model_versions) or 'n/a'}; "
        f"predictor replicas seen: {summary.predictor_replicas}"
    )
    judged = [r for r in summary.extra.get("retrain_results", ()) if "verdict" in r]
    if judged:  # champion/challenger: why a retrained model was or was not served
        lines.append(
            f"retrained models promoted: {sum(bool(r['promote']) for r in judged)} of {len(judged)} ("
            + "; ".join(_verdict_text(r) for r in judged)
            + ")"
        )
    for w in summary.workloads:
        r = w.live_result or {}
        if "in_reservation" in r:  # a Ray-native job: did its tasks run in what PRAE reserved?
            lines.append(
                f"{w.workload}: {r['in_reservation']} of {r['tasks']} tasks ran in its reservation; "
                f"tasks waited {r['wait_s_total']:.1f} s in all (longest {r['wait_s_max']:.1f} s)"
            )
    if "tick_timing" in summary.extra:
        lines.append(timing_text(summary.extra["tick_timing"]))
    if "mode" in summary.extra:
        lines.append(f"mode: {summary.extra['mode']}")
    lines.append(
        "early = reservations ready before the time they were requested for; "
        "shadow$ = shadow CPU-seconds / live CPU-seconds"
    )
    return "\n".join(lines)
