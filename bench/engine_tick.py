"""How long one tick of the run loop takes with many workloads, and where the time goes.

    .venv/bin/python bench/engine_tick.py                      # 10, 100 and 1000 workloads
    .venv/bin/python bench/engine_tick.py --workloads 2000 --ticks 5

The loop (``prae.engine.loop.EngineLoop``) runs as the engine runs it, minus Ray: the
shipped model in this process (the Serve app's code path without the HTTP hop), the real
``ReservationBroker`` over an in-memory placement backend that grants everything, the real
``FeedbackStore`` on a temporary directory, and telemetry from a random walk per workload,
each with a sample shadow. Each workload gets ``--warm`` ticks of history first, so
forecasts resolve, the choices learn and windows are full-length.

Printed per workload count: the median and the slowest tick, the model's inference alone
on the same batch (the baseline: what a tick cannot go below), the rest per workload, and
how long each flush of the feedback store takes to write (one file per workload and table,
every ``flush_every`` ticks; the loop starts it on a background thread). At 1 Hz a tick
must stay under 1000 ms. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prae.config import parse_config  # noqa: E402
from prae.engine.broker import BrokerAllocator, ReservationBroker  # noqa: E402
from prae.engine.loop import EngineLoop, ForecastBatch, Polled  # noqa: E402
from prae.engine.tracker import RoleStatus  # noqa: E402
from prae.model.predictor import Predictor  # noqa: E402
from prae.store.feedback import FeedbackStore  # noqa: E402
from prae.telemetry.sample import TelemetrySample  # noqa: E402

GIB = 1024**3


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class WalkTelemetry:
    """One live and one shadow sample per workload per poll: a random walk in log space."""

    def __init__(self, names: list[str], clock: Clock, seed: int) -> None:
        self.names, self.clock = names, clock
        self.rng = np.random.default_rng(seed)
        self.level = self.rng.normal(0.0, 1.0, (len(names), 4))
        self.t = 0

    def poll(self) -> dict[str, Polled]:
        self.t += 1
        self.level += self.rng.normal(0.0, 0.1, self.level.shape)
        v = np.exp(self.level) * np.array([1.0, GIB, 1e6, 1e6])
        # plain floats, as samples arrive from the supervisors (numpy scalars are slower)
        live_v, shadow_v = v.tolist(), (0.05 * v).tolist()
        p = min(1.0, self.t / 10_000)
        out = {}
        for i, name in enumerate(self.names):
            live = TelemetrySample(self.clock.now, *live_v[i], progress=p)
            shadow = TelemetrySample(self.clock.now, *shadow_v[i], progress=min(1.0, 20 * p))
            out[name] = Polled([live], [shadow], RoleStatus(), RoleStatus())
        return out

    def stop(self, workload: str | None = None) -> None:
        pass


class TimedModel:
    """The shipped model in-process, timing its inference."""

    def __init__(self, median_head: bool = True) -> None:
        self.predictor = Predictor.builtin()
        if not median_head:
            self.predictor.set_median_head(None)
        self.version = self.predictor.version
        self.window_steps = self.predictor.window_steps
        self.horizon_steps = self.predictor.horizon_steps
        self.seconds: list[float] = []

    def forecast(self, live: np.ndarray, shadow: np.ndarray) -> ForecastBatch:
        t0 = time.perf_counter()
        q = self.predictor.predict(live, shadow)
        self.seconds.append(time.perf_counter() - t0)
        return ForecastBatch(q, "model", self.version)

    def swap(self, checkpoint: str) -> str:
        return self.version


class GrantAll:
    """A placement backend with room for everything: every group is ready at once."""

    def create(self, name: str, bundles: list[dict[str, float]]) -> str:
        return name

    def is_ready(self, group: str) -> bool:
        return True

    def remove(self, group: str) -> None:
        pass

    def list_existing(self, prefix: str) -> list[tuple[str, Any]]:
        return []


def measure(
    n: int, ticks: int, warm: int, seed: int, median_head: bool = True, analog: bool = True
) -> dict[str, float]:
    names = [f"w{i:05d}" for i in range(n)]
    root = tempfile.mkdtemp(prefix="prae-tick-")
    cfg = parse_config(
        {
            "run": {"interval_s": 1.0, "store_dir": f"{root}/store"},
            "allocator": {"violation_budget": 0.01},
            "predictor": {"analog_candidate": analog},
            "workloads": [{"name": w, "kind": "etl", "shadow": {"mode": "sample"}} for w in names],
        },
        "bench.yaml",
    )
    clock = Clock()
    model = TimedModel(median_head)
    store = FeedbackStore(cfg.run.store_dir)
    broker = ReservationBroker(GrantAll(), None, "bench-")
    loop = EngineLoop(
        cfg,
        WalkTelemetry(names, clock, seed),
        model,
        BrokerAllocator(broker),
        store,
        None,
        clock=clock,
    )
    flush_s: list[float] = []  # each flush's writing, on whichever thread it ran
    inner = store._write_buffers

    def timed_write() -> int:
        t0 = time.perf_counter()
        rows = inner()
        flush_s.append(time.perf_counter() - t0)
        return rows

    store._write_buffers = timed_write  # type: ignore[method-assign]
    holding = []  # workloads holding a ready reservation after each warm-up tick
    for _ in range(warm):
        loop.tick()
        clock.now += 1.0
        holding.append(sum(1 for w in names if any(broker.ready_amount(w))))
    model.seconds.clear()
    flush_s.clear()
    times = []
    for _ in range(ticks):
        t0 = time.perf_counter()
        loop.tick()
        times.append(time.perf_counter() - t0)
        clock.now += 1.0
    store.flush()  # the last background flush, so that every one is timed
    tick, worst = float(np.median(times)), float(np.max(times))
    infer = float(np.median(model.seconds))
    flush = float(np.median(flush_s)) if flush_s else float("nan")
    return {
        "workloads": n,
        "tick_ms": 1e3 * tick,
        "slowest_tick_ms": 1e3 * worst,
        "inference_ms": 1e3 * infer,
        "tick_over_inference": tick / infer,
        "rest_per_workload_us": 1e6 * (tick - infer) / n,
        "flush_ms": 1e3 * flush,
        "flush_every_ticks": loop.flush_every,
        # the cold start: how many hold a reservation after the first warm-up tick that
        # reserved anything, and how many ticks until as many as at the end of the warm-up
        "holding_first": next((h for h in holding if h), 0),
        "ticks_to_hold_all": 1 + holding.index(holding[-1]) - next((i for i, h in enumerate(holding) if h), 0)
        if holding
        else 0,
        "holding": holding[-1] if holding else 0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="10,100,1000", help="comma-separated workload counts")
    ap.add_argument("--ticks", type=int, default=10, help="timed ticks per count")
    ap.add_argument("--warm", type=int, default=30, help="untimed ticks first (history, resolved forecasts)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--without-median-head",
        action="store_true",
        help="serve the LSTM's own q0.5 (the shipped median head set aside)",
    )
    ap.add_argument(
        "--no-analog",
        action="store_true",
        help="predictor.analog_candidate: false (no analog search; README has what it costs)",
    )
    args = ap.parse_args(argv)
    results = []
    for n in (int(x) for x in args.workloads.split(",")):
        r = measure(n, args.ticks, args.warm, args.seed, not args.without_median_head, not args.no_analog)
        results.append(r)
        print(
            f"{n:5d} workloads: tick {r['tick_ms']:7.1f} ms, slowest {r['slowest_tick_ms']:7.1f} ms "
            f"(model inference {r['inference_ms']:6.1f} ms, x{r['tick_over_inference']:.1f}; the rest "
            f"{r['rest_per_workload_us']:.0f} us per workload); store flush {r['flush_ms']:.0f} ms "
            f"every {r['flush_every_ticks']} ticks; cold start: {r['holding_first']} reserved in the "
            f"first tick, {r['holding']} after {r['ticks_to_hold_all']} ticks",
            flush=True,
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
