"""Does a long-lived engine's allocator bookkeeping stay bounded? Records, memory and the
time of one allocator call, early in a run and hours into it.

    .venv/bin/python bench/allocator_growth.py                      # 1000 workloads, 4 h at 10-s ticks
    .venv/bin/python bench/allocator_growth.py --workloads 200 --hours 1

The real ``ReservationBroker`` behind ``BrokerAllocator.apply_reporting``, mirrored call by
call by the engine port's ``AllocatorMirror``, over a placement backend that grants every
group at once (``bench/engine_tick.py``'s). Each workload's target swings between two sizes
with its own period (5-30 min): ~4-24 resizes per workload-hour, each a group made or removed.

Two arms run the same requests:
- ``unbounded`` (the baseline: the bookkeeping before it was bounded): the broker keeps every
  record and resize (``keep_closed_s=inf``), the mirror keeps every record;
- ``bounded`` (the engine's): the broker keeps removed groups' records and resizes for
  ``KEEP_CLOSED_S``, the mirror keeps the open records and hands the closed ones to a sink
  (the engine's: the feedback store; here a counter, so the store's cost is not in it).

Printed per arm: records the broker and the mirror hold at the end, the bytes they hold
(every object reachable from them, after the run), and the median call in the first and the last 5 % of ticks. The
last line is JSON with the ratios bounded / unbounded.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine_tick import GrantAll  # noqa: E402
from prae.engine.actors import KEEP_CLOSED_S  # noqa: E402
from prae.engine.broker import AllocatorMirror, BrokerAllocator, ReservationBroker  # noqa: E402
from prae.policy.requests import Interval, ResourceRequest  # noqa: E402

GIB = 1024**3


def request(workload: str, cpu: float, now: float) -> ResourceRequest:
    iv = Interval(cpu, cpu, cpu)
    return ResourceRequest(
        workload=workload, issued_at=now, needed_at=now + 60.0, cpu_expected=cpu, mem_expected=cpu * GIB,
        cpu=cpu, mem=cpu * GIB, cpu_interval=iv, mem_interval=iv, confidence=0.8, priority=0,
        max_pending_s=None, realisation="placement_group", reason="live_trend",
    )


def run_arm(bounded: bool, workloads: int, ticks: int, tick_s: float) -> dict[str, Any]:
    sunk = [0]

    def sink(records: list[dict[str, Any]]) -> None:
        sunk[0] += len(records)

    broker = ReservationBroker(GrantAll(), None, "g-", keep_closed_s=KEEP_CLOSED_S if bounded else math.inf)
    alloc = BrokerAllocator(broker)
    mirror = AllocatorMirror(sink if bounded else None)
    periods = [300.0 + 1500.0 * ((i * 7919) % 1000) / 1000.0 for i in range(workloads)]  # 5-30 min
    since, seconds = -math.inf, []
    for t in range(ticks):
        now = t * tick_s
        reqs = [request(f"w{i}", 1.0 + 2.0 * (int(now // periods[i]) % 2), now) for i in range(workloads)]
        t0 = time.perf_counter()
        report = alloc.apply_reporting(reqs, now, since, mirror.resizes_seen)
        mirror.asked(reqs, now)
        mirror.take(report)
        seconds.append(time.perf_counter() - t0)
        since = now
    edge = max(1, ticks // 20)
    resizes = mirror.resize_summary()["resizes"]
    held = {
        "broker_records": len(broker.history),
        "broker_resize_log": len(broker.resize_log),
        "mirror_records": len(mirror.by_name),
        "sunk_records": sunk[0],
        "resizes": resizes,
        "resizes_per_workload_hour": mirror.resize_summary()["resizes_per_workload_hour"],
        "first_call_ms": 1000 * statistics.median(seconds[:edge]),
        "last_call_ms": 1000 * statistics.median(seconds[-edge:]),
    }
    # what the bookkeeping holds: everything reachable from it, sized object by object
    held["held_mib"] = _deep_size((broker.history, broker.resize_log, broker._closed, mirror.by_name, mirror._sunk)) / 2**20
    return held


def _deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of ``obj`` and everything it reaches (containers, dataclasses' fields)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)) or type(obj).__name__ == "deque":
        size += sum(_deep_size(x, seen) for x in obj)
    elif hasattr(obj, "__dict__"):
        size += _deep_size(vars(obj), seen)
    return size


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=4.0)
    ap.add_argument("--tick-s", type=float, default=10.0)
    args = ap.parse_args(argv)
    ticks = int(args.hours * 3600 / args.tick_s)
    out: dict[str, Any] = {"workloads": args.workloads, "hours": args.hours, "tick_s": args.tick_s}
    for arm in ("unbounded", "bounded"):
        t0 = time.perf_counter()
        out[arm] = run_arm(arm == "bounded", args.workloads, ticks, args.tick_s)
        r = out[arm]
        print(
            f"{arm:>9}: broker {r['broker_records']:>7} records, {r['broker_resize_log']:>7} log; mirror "
            f"{r['mirror_records']:>7} records ({r['sunk_records']} to the sink); {r['held_mib']:.1f} MiB held; "
            f"call {r['first_call_ms']:.1f} ms first 5 %, {r['last_call_ms']:.1f} ms last 5 %; "
            f"{r['resizes']} resizes ({r['resizes_per_workload_hour']:.1f} per workload-hour); "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    u, b = out["unbounded"], out["bounded"]
    out["held_ratio"] = b["held_mib"] / u["held_mib"]
    out["last_call_ratio"] = b["last_call_ms"] / u["last_call_ms"]
    out["same_resizes"] = b["resizes"] == u["resizes"]
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
