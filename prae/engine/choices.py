"""A workload's point-forecast choice carried from one run to the next, via the store.

Plain pyarrow and numpy. At the end of a run the loop writes each workload's
``ChoiceRecord`` to the store's ``choices`` table (one row per resource and candidate);
the next run of a workload of the same name starts its choice from the latest one, so
it uses what the previous run measured (a replay's shadow, a steady VM's last value) from
its first forecast instead of the model's median for its first ``MIN_OUTCOMES``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from prae.model.combination import CANDIDATES, ChoiceRecord
from prae.resources import RESOURCES

log = logging.getLogger(__name__)


def choice_rows(record: ChoiceRecord, saved_at: float) -> list[dict[str, Any]]:
    """The store rows of one workload's record (``CANDIDATES`` x ``RESOURCES``)."""
    return [
        {
            "saved_at": saved_at,
            "resource": res,
            "candidate": cand,
            "err": float(record.err[r, k]),
            "weight": float(record.weight[r]),
            "count": int(record.count[r]),
        }
        for r, res in enumerate(RESOURCES)
        for k, cand in enumerate(CANDIDATES)
    ]


def latest_choice(table: pa.Table, workload: str) -> ChoiceRecord | None:
    """The record of ``workload``'s latest run in a ``choices`` table; None if it has none
    or it is not usable (then the run starts its choice from nothing, with a warning)."""
    if table.num_rows == 0:
        return None
    saved = table.column("saved_at").to_numpy(zero_copy_only=False)
    rows = table.filter(pa.array(saved == np.nanmax(saved))).to_pylist()
    err = np.full((len(RESOURCES), len(CANDIDATES)), np.nan)
    weight = np.zeros(len(RESOURCES))
    count = np.zeros(len(RESOURCES), dtype=np.int64)
    for row in rows:
        if row["resource"] not in RESOURCES or row["candidate"] not in CANDIDATES:
            continue  # written by another version of PRAE: what it shares still counts
        if any(row[c] is None for c in ("err", "weight", "count")):
            continue  # an incomplete row leaves its resource out
        r, k = RESOURCES.index(row["resource"]), CANDIDATES.index(row["candidate"])
        err[r, k], weight[r], count[r] = row["err"], row["weight"], row["count"]
    known = ~np.isnan(err).any(axis=1)  # a resource is carried with all its candidates or not at all
    bad = (weight < 0) | (count < 0) | (known & (np.nan_to_num(err) < 0).any(axis=1))
    if bad.any():
        log.warning(
            "workload '%s': the stored point-forecast choice has negative errors or counts; "
            "starting from nothing (fix: delete its files under <store>/choices/workload=%s)",
            workload,
            workload,
        )
        return None
    if not known.any():
        return None
    return ChoiceRecord(
        np.where(known[:, None], err, 0.0), np.where(known, weight, 0.0), np.where(known, count, 0)
    )
