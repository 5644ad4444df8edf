"""What the feedback store's compaction buys a reader, and what it costs the writer.

    .venv/bin/python bench/store_files.py                     # an hour of 5-s flushes
    .venv/bin/python bench/store_files.py --flushes 2880 --rows 5

One workload's telemetry is flushed ``--flushes`` times (``--rows`` rows each, as the run
loop flushes every 5 ticks), once with compaction off (the baseline, same run) and once as
the store runs it (``COMPACT_MIN_FILES``). Printed: the writing time, the files left and
the time to read the workload's rows back (what retraining and a notebook pay). The last
line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prae.store.feedback as feedback  # noqa: E402


def run(flushes: int, rows: int, min_files: int) -> dict[str, float]:
    saved = feedback.COMPACT_MIN_FILES
    feedback.COMPACT_MIN_FILES = min_files
    try:
        with tempfile.TemporaryDirectory(prefix="prae-store-") as root:
            store = feedback.FeedbackStore(root)
            t0 = time.perf_counter()
            for i in range(flushes):
                store.append(
                    "telemetry",
                    "w",
                    [
                        {"ts": float(rows * i + k), "role": "live", "cpu": 1.0, "mem": 1e9, "disk": 0.0, "net": 0.0}
                        for k in range(rows)
                    ],
                )
                store.flush()
            write_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            n = store.read("telemetry", "w").num_rows
            read_s = time.perf_counter() - t0
            assert n == flushes * rows, (n, flushes * rows)
            return {"write_s": write_s, "files": len(store.files("telemetry", "w")), "read_ms": 1e3 * read_s}
    finally:
        feedback.COMPACT_MIN_FILES = saved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flushes", type=int, default=720, help="an hour of flushes every 5 s")
    ap.add_argument("--rows", type=int, default=5, help="rows per flush")
    args = ap.parse_args(argv)
    base = run(args.flushes, args.rows, min_files=10**9)
    comp = run(args.flushes, args.rows, min_files=feedback.COMPACT_MIN_FILES)
    for label, r in (("no compaction (baseline)", base), ("compaction", comp)):
        print(
            f"{label:25s}: {args.flushes} flushes written in {r['write_s']:.2f} s, "
            f"{r['files']} files, read back in {r['read_ms']:.0f} ms",
            flush=True,
        )
    result = {
        "flushes": args.flushes,
        "rows_per_flush": args.rows,
        "baseline": base,
        "compaction": comp,
        "read_speedup": base["read_ms"] / comp["read_ms"],
        "write_cost_ratio": comp["write_s"] / base["write_s"],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
