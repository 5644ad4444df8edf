"""The run loop over fakes: no Ray. Telemetry in, forecasts and reservations out, rows stored."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from prae.config import parse_config
from prae.engine.broker import BrokerAllocator, ReservationBroker
from prae.engine.loop import EngineLoop, ForecastBatch, Polled
from prae.engine.tick_timing import timing_text
from prae.engine.tracker import RoleStatus
from prae.resources import QUANTILES, RESOURCES
from prae.store.feedback import FeedbackStore
from prae.telemetry.sample import TelemetrySample
from tests.fakes import FakeClock, FakePlacementBackend

GIB = 1024**3


def config(tmp_path, **alloc):
    return parse_config(
        {
            "run": {"interval_s": 1.0, "window_steps": 8, "horizon_steps": 3, "store_dir": str(tmp_path / "store")},
            "retrain": {"every_s": 5},
            "allocator": alloc,
            "workloads": [
                {"name": "steady", "kind": "etl"},
                {"name": "steps", "kind": "train", "profile": {"priority": 1}},
            ],
        },
        "test.yaml",
    )


def demand(name: str, t: int) -> float:
    """CPU demand in cores: steady stays at 1; 'steps' climbs one core every 10 s."""
    return 1.0 if name == "steady" else 1.0 + t // 10


class ScriptedTelemetry:
    def __init__(self, clock: FakeClock, length: int = 30) -> None:
        self.clock = clock
        self.t = 0
        self.length = length
        self.stopped: list[str | None] = []

    def poll(self) -> dict[str, Polled]:
        self.t += 1
        out = {}
        for name in ("steady", "steps"):
            done = self.t > self.length
            sample = TelemetrySample(self.clock.now, demand(name, self.t), GIB, 1e6, 0.0, self.t / self.length)
            shadow = TelemetrySample(self.clock.now, demand(name, self.t * 20) * 0.05, GIB / 20, 5e4, 0.0, min(1.0, 20 * self.t / self.length))
            out[name] = Polled(
                live=[] if done else [sample],
                shadow=[] if done else [shadow],
                live_status=RoleStatus(exit_code=0 if done else None, cost_cpu_seconds=10.0),
                shadow_status=RoleStatus(exit_code=0, cost_cpu_seconds=0.5),
            )
        return out

    def stop(self, workload: str | None = None) -> None:
        self.stopped.append(workload)


class OracleForecaster:
    """Knows the demand function: forecasts exactly, with a ±10 % interval."""

    horizon_steps = 3
    window_steps = 8

    def __init__(self, telemetry: ScriptedTelemetry, fail_at: set[int] | None = None) -> None:
        self.telemetry = telemetry
        self.version = "v0"
        self.fail_at = fail_at or set()
        self.swapped: list[str] = []

    def forecast(self, live: np.ndarray, shadow: np.ndarray) -> ForecastBatch:
        b = live.shape[0]
        q = np.zeros((b, 3, 4, len(QUANTILES)))
        names = ["steady", "steps"][-b:] if b == 1 else ["steady", "steps"]
        for i, name in enumerate(names):
            for h in range(3):
                cpu = demand(name, self.telemetry.t + h + 1)
                q[i, h, 0] = [cpu * f for f in (0.9, 1.0, 1.1, 1.15, 1.2)]
                q[i, h, 1] = GIB
        source = "fallback" if self.telemetry.t in self.fail_at else "model"
        return ForecastBatch(q, source, self.version)

    def swap(self, checkpoint: str) -> str:
        self.swapped.append(checkpoint)
        self.version = f"v{len(self.swapped)}"
        return self.version


class CountingRetrainer:
    def __init__(self) -> None:
        self.started: list[int] = []
        self._ready = False

    @property
    def running(self) -> bool:
        return bool(self.started) and not self._ready and len(self.started) == 1

    def start(self, version: int) -> None:
        self.started.append(version)

    def stop(self) -> None:
        self.stopped = True

    def poll(self) -> str | None:
        if self.started and not self._ready:
            self._ready = True
            return f"/ckpt/model-v{self.started[-1]}.pt"
        return None


def build(tmp_path, fail_at=None, **alloc):
    clock = FakeClock()
    cfg = config(tmp_path, **alloc)
    telemetry = ScriptedTelemetry(clock)
    backend = FakePlacementBackend(capacity=16)
    broker = ReservationBroker(backend, None, "t-")
    store = FeedbackStore(cfg.run.store_dir)
    retrainer = CountingRetrainer()
    loop = EngineLoop(cfg, telemetry, OracleForecaster(telemetry, fail_at), BrokerAllocator(broker), store, retrainer, clock=clock)
    return loop, clock, backend, broker, store, retrainer


def run_loop(loop, clock):
    """Ticks an interval apart on the fake clock; as on a real one, a flush started on the
    flush thread has ended by the next tick (a due retraining waits for one)."""

    def sleep(seconds: float) -> None:
        clock.advance(seconds)
        while loop.store.flushing():
            time.sleep(0.001)

    loop.run(sleep=sleep)


def test_loop_stores_forecasts_with_actuals_and_reserves_ahead(tmp_path):
    loop, clock, backend, broker, store, retrainer = build(tmp_path)
    run_loop(loop, clock)

    tel = store.read("telemetry")
    assert tel.num_rows == 2 * 30 * 2  # 2 workloads x 30 steps x (live + shadow)
    fc = store.read("forecasts")
    assert set(fc.column("resource").to_pylist()) == {"cpu", "mem", "disk", "net"}
    resolved = [a for a in fc.column("actual").to_pylist() if a is not None]
    assert len(resolved) > 100
    # lead = horizon 3 steps of 1 s
    lead = np.array(fc.column("target_ts").to_pylist()) - np.array(fc.column("issued_at").to_pylist())
    assert np.allclose(lead, 3.0)
    # the oracle's median is exact for cpu wherever an actual was seen
    cpu = fc.filter(np.array(fc.column("resource").to_pylist()) == "cpu")
    pairs = [(m, a) for m, a in zip(cpu.column("q0.5").to_pylist(), cpu.column("actual").to_pylist(), strict=True) if a is not None]
    assert max(abs(m - a) for m, a in pairs) < 1e-6

    records = broker.records()
    steps = [r for r in records if r["workload"] == "steps"]
    # the 'steps' workload grows 1 -> 4 cores: several reservations, each ready before needed
    assert len(steps) >= 3
    assert all(r["in_place_before_need"] for r in steps)
    # nothing leaks: every group removed at the end, and the finished workloads released
    assert backend.live() == []
    assert set(loop.telemetry.stopped) >= {"steady", "steps", None}


def test_loop_hot_swaps_after_retraining(tmp_path):
    loop, clock, *_, retrainer = build(tmp_path)
    run_loop(loop, clock)
    assert retrainer.started == [1] or retrainer.started[:1] == [1]
    assert len(loop.swaps) >= 1
    swap = loop.swaps[0]
    assert swap.checkpoint == "/ckpt/model-v1.pt" and swap.version_before == "v0" and swap.version_after == "v1"
    versions = set(loop.store.read("forecasts").column("model_version").to_pylist())
    assert {"v0", "v1"} <= versions


def test_fallback_ticks_are_marked(tmp_path):
    loop, clock, *_ = build(tmp_path, fail_at={5, 6, 7})
    run_loop(loop, clock)
    sources = loop.store.read("forecasts").column("source").to_pylist()
    assert "fallback" in sources and "model" in sources
    assert loop.fallback_ticks == 3


def test_observe_only_reserves_nothing_but_records(tmp_path):
    loop, clock, backend, broker, store, _ = build(tmp_path, enabled=False)
    run_loop(loop, clock)
    assert backend.groups == []
    assert store.read("forecasts").num_rows > 0


def test_duration_stops_early_and_releases(tmp_path):
    loop, clock, backend, *_ = build(tmp_path)
    loop.run(duration_s=10, sleep=clock.advance)
    assert loop.ticks <= 12
    assert backend.live() == []
    assert not math.isnan(loop.store.read("telemetry").column("cpu").to_pylist()[0])


def test_violation_budget_sets_each_workloads_amount(tmp_path):
    """allocator.violation_budget replaces the fixed reserve quantile by the pooled
    budget's level per workload (the backtest's policy): a 1 % budget reserves at least
    the q0.9 amount and mostly more; a 30 % budget at most that and often less (where the
    calibrated q0.9 has come down to the median there is nothing to save). The forecasts
    are the same in the three runs, only the amounts differ."""

    def amounts(sub, **alloc):
        loop, clock, *_ = build(tmp_path / sub, **alloc)
        seen = []
        plan = loop.planner.plan

        def spy(forecasts, now, held):
            seen.extend((f.workload, f.cpu_reserve_q, f.mem_reserve_q) for f in forecasts)
            return plan(forecasts, now, held=held)

        loop.planner.plan = spy
        run_loop(loop, clock)
        return np.array([[c, m] for _, c, m in seen]), [w for w, _, _ in seen]

    q90, names = amounts("q90")
    tight, names_tight = amounts("tight", violation_budget=0.01)
    loose, names_loose = amounts("loose", violation_budget=0.3)
    assert names == names_tight == names_loose and len(names) > 20
    assert (tight >= q90 - 1e-9).all() and (tight[:, 0] > q90[:, 0] + 1e-9).mean() > 0.5
    assert (loose <= q90 + 1e-9).all() and (loose[:, 0] < q90[:, 0] - 1e-9).mean() > 0.3


def test_profile_and_allocator_settings_reach_the_planner(tmp_path):
    """A tasks job reserves in bundles of its task size; the config's resize limits and peak
    hold are the planner's, so the live engine behaves like the simulator that tuned them."""
    from prae.engine.loop import workload_policy

    cfg = parse_config(
        {
            "run": {"store_dir": str(tmp_path / "store")},
            "allocator": {"peak_hold_s": 120, "min_hold_s": 10, "max_shrinks_per_hour": 3},
            "workloads": [
                {"name": "tasks", "kind": "tasks", "params": {"task_cpu": 0.5}},
                {"name": "sized", "kind": "etl", "profile": {"unit_cpu": 2}},
                {"name": "plain", "kind": "etl"},
            ],
        },
        "t.yaml",
    )
    assert [workload_policy(w).unit_cpu for w in cfg.workloads] == [0.5, 2.0, 0.0]
    loop = EngineLoop(cfg, None, None, None, FeedbackStore(tmp_path / "store"))  # type: ignore[arg-type]
    lim = loop.planner.limits
    assert (lim.peak_hold_s, lim.min_hold_s, lim.max_shrinks_per_hour) == (120.0, 10.0, 3.0)
    assert loop.policies["tasks"].unit_cpu == 0.5


def test_tracker_chooses_the_last_value_where_the_model_median_keeps_missing():
    """The live engine makes the backtest's per-workload median choice: on a flat series the
    last value is exact and a model median 30 % high is not; once outcomes have resolved,
    the forecast's median is the last value, and the model's interval is moved onto it
    before it is calibrated (here, where the last value is exact, narrowed). Before any
    outcome, the model's median stands."""
    from prae.config import WorkloadSpec
    from prae.engine.tracker import PendingForecast, WorkloadTracker

    tr = WorkloadTracker(WorkloadSpec(name="flat", kind="etl"), interval_s=1.0)
    i50 = QUANTILES.index(0.5)
    raw = np.array([[0.5, 1.3, 2.0, 2.2, 2.5]] * 4)  # (R, Q): median 1.3, truth 1.0
    # 20 outcomes before anything but the model may be chosen; the tails' own candidates
    # need 20 changes first, and the outcomes before scored as the model's, so the model's
    # tail keeps a weight exp(-20 * (n / 20)) after n outcomes of theirs: ~0 from n ~ 40
    for t in range(65):
        tr.live.extend([TelemetrySample(ts=float(t), cpu=1.0, mem=1.0, disk=1.0, net=1.0)])
        fc = tr.point_forecast(raw, 1)
        if t == 0:
            assert fc.quantiles[0, i50] == 1.3  # no outcome yet: the model
        tr.add_forecast(PendingForecast(float(t), t + 1.0, fc.quantiles, "model", "v", False, fc))
        tr.resolve({})
    cal = tr.point_forecast(raw, 1).quantiles
    assert cal[0, i50] == 1.0
    # the model's interval moved onto 1.0 (0.2 .. 2.2) and its q0.1 narrowed by the
    # calibration (every outcome was exactly 1.0); every resource (all are tail resources)
    # takes its levels >= q0.9 from its anchor plus this run's changes (all 0) and its
    # recent values (all 1.0): exactly 1.0
    moved = raw[0] - 0.3
    upper = np.array(QUANTILES) >= 0.9
    for r in range(len(RESOURCES)):
        assert cal[r, upper].tolist() == [1.0] * int(upper.sum()) and moved[0] < cal[r, 0] < 1.0


def test_tracker_searches_the_analog_candidate_unless_the_config_turns_it_off(tmp_path):
    """A workload whose CPU repeats a 6-step shape: once its history holds enough past
    moments the analog candidate (column ``CANDIDATES.index('analog')``) says what followed
    the last hour's shape; with ``predictor.analog_candidate: false`` the column stays NaN
    (no weight in the choice) and the loop builds its trackers that way."""
    from prae.config import WorkloadSpec
    from prae.engine.tracker import WorkloadTracker
    from prae.model.combination import CANDIDATES

    col = CANDIDATES.index("analog")
    shape = [1.0, 1.0, 1.0, 4.0, 4.0, 2.0]
    on = WorkloadTracker(WorkloadSpec(name="on", kind="etl"), interval_s=1.0)
    off = WorkloadTracker(WorkloadSpec(name="off", kind="etl"), interval_s=1.0, analog=False)
    raw_median = np.full(len(RESOURCES), 2.0)
    for t in range(60):
        v = shape[t % 6]
        sample = TelemetrySample(ts=float(t), cpu=v, mem=1.0, disk=1.0, net=1.0)
        on.live.extend([sample])
        off.live.extend([sample])
    cand_on, _, analog_on = on.point_inputs(raw_median, 2)
    cand_off, _, analog_off = off.point_inputs(raw_median, 2)
    cpu = RESOURCES.index("cpu")
    assert cand_on[cpu, col] == shape[(59 + 2) % 6]  # the shape two steps on: 1.0 after ...4, 2
    assert np.isnan(cand_off[:, col]).all()
    np.testing.assert_array_equal(np.delete(cand_on, col, axis=1), np.delete(cand_off, col, axis=1))
    # 60 samples hold fewer than ANALOG_SPREAD past moments: no analog quantiles yet, either way
    assert np.isnan(analog_on).all() and np.isnan(analog_off).all()
    # 420 do: the quantiles of what followed the 60 moments most like now (here the same
    # phase of the shape, two steps on: 1.0), and the forecast calibrates the model's
    # quantiles moved onto the chosen median and blended with them
    from prae.model.combination import blend_analog, centre_on

    for tr in (on, off):
        more = range(60, 420)
        tr.live.extend([TelemetrySample(ts=float(t), cpu=shape[t % 6], mem=1.0, disk=1.0, net=1.0) for t in more])
    cand_on, _, analog_on = on.point_inputs(raw_median, 2)
    assert analog_on[cpu].tolist() == [shape[(419 + 2) % 6]] * len(QUANTILES)
    raw = np.sort(np.random.default_rng(0).gamma(2.0, 1.0, (len(RESOURCES), len(QUANTILES))), axis=-1)
    fc = on.point_forecast(raw, 2)
    cand = on.point_inputs(raw[:, QUANTILES.index(0.5)], 2).candidates
    want = blend_analog(centre_on(raw, on.state.median.select(np.array([0]), cand[None])[0]), analog_on)
    np.testing.assert_array_equal(fc.centred, want)
    assert not np.allclose(fc.centred, centre_on(raw, fc.centred[:, QUANTILES.index(0.5)]))
    fc_off = off.point_forecast(raw, 2)
    np.testing.assert_array_equal(fc_off.centred, centre_on(raw, fc_off.centred[:, QUANTILES.index(0.5)]))

    cfg = parse_config(
        {"predictor": {"analog_candidate": False}, "workloads": [{"name": "a", "kind": "etl"}]}, "t.yaml"
    )
    loop = EngineLoop(cfg, None, None, None, FeedbackStore(tmp_path / "store"))  # type: ignore[arg-type]
    looped = loop.trackers["a"]
    looped.live.extend([TelemetrySample(ts=float(t), cpu=shape[t % 6], mem=1.0, disk=1.0, net=1.0) for t in range(60)])
    assert np.isnan(looped.point_inputs(raw_median, 2)[0][:, col]).all()


def test_tracker_measures_cpus_tail_from_the_peak_of_the_last_hour():
    """CPU swinging between 1 and 3 cores every step: from the last value the changes are
    +-2 and the tail after a high step would be 3 + 2 = 5; from the hour's peak (3) they are
    0 or -2, and the tail is 3 whatever the last step was. Disk, swinging the same way,
    keeps the last value as its anchor (and its recent values' tail, 3, weighs in)."""
    from prae.config import WorkloadSpec
    from prae.engine.tracker import PendingForecast, WorkloadTracker

    tr = WorkloadTracker(WorkloadSpec(name="swing", kind="etl"), interval_s=1.0)
    cpu, disk = RESOURCES.index("cpu"), RESOURCES.index("disk")
    upper = np.array(QUANTILES) >= 0.9
    raw = np.array([[0.5, 2.0, 20.0, 25.0, 30.0]] * 4)  # a loose model tail
    for t in range(60):
        v = 1.0 if t % 2 else 3.0
        tr.live.extend([TelemetrySample(ts=float(t), cpu=v, mem=1.0, disk=v, net=1.0)])
        tr.resolve({})
        fc = tr.point_forecast(raw, 1)
        tr.add_forecast(PendingForecast(float(t), t + 1.0, fc.quantiles, "model", "v", False, fc))
        if t >= 45:
            assert fc.anchor[cpu] == 3.0 and fc.anchor[disk] == v
            assert np.allclose(fc.quantiles[cpu, upper], 3.0), fc.quantiles[cpu]
            # disk: the last value + the +2 change, weighed with its recent values (1 and 3):
            # after a low step both say 3, after a high one 5 and 3
            top = fc.quantiles[disk, upper][-1]
            assert (top == 3.0) if v == 1.0 else (3.0 < top < 5.0), (v, top)


def test_a_workloads_next_run_starts_from_the_choice_its_last_run_learnt(tmp_path, caplog):
    """The loop stores each workload's point-forecast choice when it closes; the next loop
    on the same store starts each tracker from its workload's latest record."""
    from prae.engine.choices import latest_choice

    loop, clock, *_, store, _ = build(tmp_path)
    run_loop(loop, clock)
    learnt = {name: tr.choice_record() for name, tr in loop.trackers.items()}
    assert all(r.count.min() > 0 for r in learnt.values())
    again, *_ = build(tmp_path)
    for name, tr in again.trackers.items():
        np.testing.assert_allclose(tr.choice_record().err, learnt[name].err)
        np.testing.assert_array_equal(tr.choice_record().count, learnt[name].count)
    # a later run's record wins; a record with a negative error is not used, and says so
    table = store.read("choices", "steady")
    later = table.set_column(0, "saved_at", pa.array([t + 10.0 for t in table.column("saved_at").to_pylist()]))
    errs = [2.0 * e for e in later.column("err").to_pylist()]
    later = later.set_column(3, "err", pa.array(errs))
    np.testing.assert_allclose(latest_choice(pa.concat_tables([table, later]), "steady").err, 2.0 * learnt["steady"].err)
    holed = later.set_column(3, "err", pa.array([None] + errs[1:], pa.float64()))  # cpu's model err
    partial = latest_choice(pa.concat_tables([table, holed]), "steady")
    assert partial.count[0] == 0 and (partial.count[1:] == learnt["steady"].count[1:]).all()
    broken = later.set_column(3, "err", pa.array([-1.0] + errs[1:]))
    assert latest_choice(pa.concat_tables([table, broken]), "steady") is None
    assert "negative" in caplog.text and "choices/workload=steady" in caplog.text


def test_a_tracker_with_a_carried_choice_uses_the_last_value_from_the_start():
    from prae.config import WorkloadSpec
    from prae.engine.tracker import WorkloadTracker
    from prae.model.combination import CANDIDATES, ChoiceRecord

    err = np.ones((4, len(CANDIDATES)))
    err[:, 1] = 0.0  # the last value was exact last time
    carried = ChoiceRecord(err, np.full(4, 30.0), np.full(4, 30))
    tr = WorkloadTracker(WorkloadSpec(name="flat", kind="etl"), interval_s=1.0, carried=carried)
    tr.live.extend([TelemetrySample(ts=0.0, cpu=1.0, mem=1.0, disk=1.0, net=1.0)])
    raw = np.array([[0.5, 1.3, 2.0, 2.2, 2.5]] * 4)
    cal, *_ = tr.point_forecast(raw, 1)
    assert cal[:, QUANTILES.index(0.5)].tolist() == [1.0] * 4


def test_tracker_follows_a_shadow_that_foreshadows_the_live_run():
    """A live run whose CPU steps 1 -> 3 -> 1 cores with its progress, and a finished shadow
    that did the same at 1/10 of the size: once outcomes resolve, the median at a 2-step
    lead is the shadow's change applied to the last value -- the step is forecast before
    it happens -- where the model's median (flat 1.0) and the last value miss it."""
    from prae.config import ShadowSpec, WorkloadSpec
    from prae.engine.tracker import PendingForecast, WorkloadTracker

    def level(p: float) -> float:
        return 3.0 if (p * 10) % 4 >= 2 else 1.0  # 3 cores from progress 0.2 to 0.4, ...

    spec = WorkloadSpec(name="w", kind="etl", shadow=ShadowSpec(mode="sample", fraction=0.1))
    tr = WorkloadTracker(spec, interval_s=1.0, median_half_life=20)
    for i in range(101):
        p = i / 100
        tr.shadow.extend([TelemetrySample(ts=0.01 * i, cpu=0.1 * level(p), mem=1.0, disk=1.0, net=1.0, progress=p)])
    i50 = QUANTILES.index(0.5)
    raw = np.array([[0.1, 1.0, 9.0, 9.5, 10.0]] * 4)  # wide interval, median always 1.0
    lead, hits, steps_before_change = 2, 0, 0
    for t in range(60):
        p = t / 100
        tr.live.extend([TelemetrySample(ts=1.0 + t, cpu=level(p), mem=1.0, disk=1.0, net=1.0, progress=p)])
        tr.resolve({})
        fc = tr.point_forecast(raw, lead)
        tr.add_forecast(PendingForecast(1.0 + t, 1.0 + t + lead, fc.quantiles, "model", "v", True, fc))
        future = level((t + lead) / 100)
        if t >= 25 and future != level(p):  # a step change is coming; the last value misses it
            steps_before_change += 1
            hits += bool(np.isclose(fc.quantiles[0, i50], future))
    assert steps_before_change >= 4
    assert hits == steps_before_change


def test_tracker_forecasts_a_burst_from_nothing_with_the_shadow_level():
    """Disk writes in bursts (a checkpoint every 0.2 of progress) and nothing between: the
    shadow's relative change is undefined from 0, but the shadow ahead in live units (here
    1/20 of the bytes per unit of progress) forecasts every later burst before it comes."""
    from prae.config import ShadowSpec, WorkloadSpec
    from prae.engine.tracker import PendingForecast, WorkloadTracker

    def burst(p: float) -> float:
        return 2.0 if round(p * 100) % 20 in (0, 1) and p > 0 else 0.0

    spec = WorkloadSpec(name="w", kind="train", shadow=ShadowSpec(mode="sample", fraction=0.05))
    tr = WorkloadTracker(spec, interval_s=1.0, median_half_life=20)
    for i in range(101):
        p = i / 100
        tr.shadow.extend([TelemetrySample(ts=0.01 * i, cpu=1.0, mem=1.0, disk=burst(p) / 20, net=1.0, progress=p)])
    i50, disk = QUANTILES.index(0.5), RESOURCES.index("disk")
    raw = np.array([[0.1, 1.0, 9.0, 9.5, 10.0]] * 4)  # the model: 1.0 whatever comes
    lead, hits, bursts_ahead = 2, 0, 0
    for t in range(90):
        p = t / 100
        tr.live.extend([TelemetrySample(ts=1.0 + t, cpu=1.0, mem=1.0, disk=burst(p), net=1.0, progress=p)])
        tr.resolve({})
        fc = tr.point_forecast(raw, lead)
        tr.add_forecast(PendingForecast(1.0 + t, 1.0 + t + lead, fc.quantiles, "model", "v", True, fc))
        if t >= 45 and burst((t + lead) / 100) > 0 and burst(p) == 0:
            bursts_ahead += 1
            hits += bool(np.isclose(fc.quantiles[disk, i50], 2.0))
    assert bursts_ahead >= 4
    assert hits == bursts_ahead


def test_trackers_sharing_one_learning_state_issue_and_learn_as_each_would_alone():
    """The loop calibrates, chooses and learns for all its workloads in one call each
    (``issue_forecasts``, ``learn_outcomes`` over one ``LearningState``). Three workloads
    (one with a shadow) run that way and, side by side, each with a state of its own:
    every issued forecast and everything learnt is the same -- including a workload whose
    outcomes resolve four at a time after it was not resolved for a while (the reference
    learns them one by one)."""
    from prae.config import ShadowSpec, WorkloadSpec
    from prae.engine.tracker import (
        LearningState,
        PendingForecast,
        WorkloadTracker,
        issue_forecasts,
        learn_outcomes,
    )

    specs = [
        WorkloadSpec(name="a", kind="etl"),
        WorkloadSpec(name="b", kind="train", shadow=ShadowSpec(mode="sample", fraction=0.1)),
        WorkloadSpec(name="c", kind="etl"),
    ]
    state = LearningState(3, median_half_life=20)
    shared = [WorkloadTracker(s, 1.0, state=state, slot=i) for i, s in enumerate(specs)]
    alone = [WorkloadTracker(s, 1.0, median_half_life=20) for s in specs]
    rng = np.random.default_rng(7)
    for i in range(101):  # b's shadow: done, with a step at progress 0.3..0.5
        s = TelemetrySample(ts=0.01 * i, cpu=0.3 if 0.3 <= i / 100 < 0.5 else 0.1, mem=1.0, disk=1.0, net=1.0, progress=i / 100)
        shared[1].shadow.extend([s])
        alone[1].shadow.extend([s])
    lead = 2
    for t in range(80):
        level = rng.gamma(2.0, 1.0, (3, 4)) + np.array([[0.0], [1.0 if 30 <= t < 50 else 0.0], [0.0]])
        raw = np.sort(rng.gamma(2.0, 1.0, (3, 4, len(QUANTILES))), axis=-1)
        for trs in (shared, alone):
            for k, tr in enumerate(trs):
                tr.live.extend([TelemetrySample(1.0 + t, *level[k], progress=t / 100)])
        # c is not resolved for a while, then all at once: several outcomes of one slot in a tick
        skip = {2} if 40 <= t < 43 else set()
        outcomes = []
        for k, tr in enumerate(shared):
            if k not in skip:
                rows, done = tr.take_resolved({})
                outcomes.extend((tr.slot, fc, y) for fc, y in done)
        learn_outcomes(state, outcomes)
        for k, tr in enumerate(alone):  # the reference: one outcome per call, in order
            if k not in skip:
                for fc, y in tr.take_resolved({})[1]:
                    learn_outcomes(tr.state, [(0, fc, y)])
        got = issue_forecasts(shared, raw, lead)
        for k, tr in enumerate(alone):
            want = tr.point_forecast(raw[k], lead)
            for a, b in zip(got[k], want, strict=True):
                np.testing.assert_array_equal(a, b)
            for trs, fc in ((shared, got[k]), (alone, want)):
                trs[k].add_forecast(PendingForecast(1.0 + t, 1.0 + t + lead, fc.quantiles, "model", "v", k == 1, fc))
    for k, tr in enumerate(alone):
        mine, theirs = shared[k].choice_record(), tr.choice_record()
        np.testing.assert_array_equal(mine.err, theirs.err)
        np.testing.assert_array_equal(mine.count, theirs.count)
        assert state.calibration.coverage(np.array([k])) == tr.state.calibration.coverage()
    assert shared[1].choice_record().count.min() > 0


def test_a_series_keeps_its_newest_samples_in_order_across_its_buffer_wrapping():
    """A tracker's series holds its newest ``capacity`` samples as one contiguous array; the
    buffer moves them to its front when full. Fed 3 x its capacity, one sample at a time and
    in batches, it reads back exactly the newest samples, oldest first."""
    from prae.engine.tracker import Series

    def sample(t: int) -> TelemetrySample:
        return TelemetrySample(ts=float(t), cpu=t, mem=10 * t, disk=0.0, net=-1.0, progress=t / 100)

    s = Series(capacity=5)
    assert len(s) == 0 and s.values.shape == (0, 4) and s.nearest(1.0) is None
    s.extend([sample(0)])
    for t in range(1, 13):
        s.extend([sample(t)] if t % 3 else [])
    s.extend(sample(t) for t in range(13, 20))
    kept = [t for t in range(20) if t == 0 or t % 3 or t >= 13][-5:]
    assert len(s) == 5 and s.total == 16
    assert s.ts.tolist() == [float(t) for t in kept]
    assert s.values[:, 0].tolist() == [float(t) for t in kept] and s.values[:, 1].tolist() == [10.0 * t for t in kept]
    assert np.allclose(s.progress, [t / 100 for t in kept])
    assert s.peak(2.5).tolist() == [19.0, 190.0, 0.0, -1.0]  # samples 17..19 (t >= 16.5)
    assert s.nearest(16.2)[0] == 16.0 and s.nearest(16.2)[1].tolist() == [16.0, 160.0, 0.0, -1.0]
    with pytest.raises(ValueError, match="read-only"):
        s.values[0, 0] = 1.0


def test_the_shadow_aligned_for_the_last_rows_equals_the_whole_historys_last_rows():
    """The model's window asks for the alignment of its own rows only; each row reads the
    live progress of the few steps before it, so computing the last k rows alone must give
    exactly the whole history's last k rows (progress with gaps and a stall included)."""
    from prae.config import ShadowSpec, WorkloadSpec
    from prae.engine.tracker import WorkloadTracker

    rng = np.random.default_rng(3)
    spec = WorkloadSpec(name="w", kind="etl", shadow=ShadowSpec(mode="sample", fraction=0.05))
    progress = np.cumsum(rng.uniform(0.0, 0.004, 200))
    progress[rng.random(200) < 0.15] = np.nan  # steps that did not report progress
    progress[100:110] = progress[99]  # a stall
    shadow = rng.gamma(2.0, 1.0, (400, 4))

    def fresh() -> WorkloadTracker:
        tr = WorkloadTracker(spec, interval_s=1.0)
        for i in range(400):
            tr.shadow.extend([TelemetrySample(0.01 * i, *shadow[i], progress=i / 400)])
        for t, p in enumerate(progress):
            tr.live.extend([TelemetrySample(1.0 + t, 1.0, 1.0, 1.0, 1.0, progress=p)])
        return tr

    whole = {lead: fresh().aligned_shadow(lead) for lead in (0, 3)}
    for lead in (0, 3):
        assert np.isfinite(whole[lead]).any()
        for rows in (1, 5, 48, 200, 500):
            part = fresh().aligned_shadow(lead, rows=rows)
            np.testing.assert_array_equal(part, whole[lead][-rows:])


def test_the_shadow_aligned_now_kept_row_by_row_equals_aligning_the_whole_history():
    """``aligned_now`` aligns again only the rows that may still change (the shadow has not
    reached them yet): after every batch of samples, in any order of live and shadow, it
    must equal aligning the whole history; also once the live history wraps its buffer
    (rows with their whole rate window retained). Its kept level ratio equals the whole
    history's."""
    from prae.config import ShadowSpec, WorkloadSpec
    from prae.engine.tracker import Series, WorkloadTracker
    from prae.model.combination import level_ratio
    from prae.telemetry.alignment import RATE_WINDOW

    rng = np.random.default_rng(5)
    spec = WorkloadSpec(name="w", kind="etl", shadow=ShadowSpec(mode="sample", fraction=0.05))
    n_live, n_shadow = 300, 600
    progress = np.cumsum(rng.uniform(0.0, 0.0033, n_live))
    progress[rng.random(n_live) < 0.15] = np.nan
    progress[120:130] = progress[119]  # a stall
    for t in range(150, 290, 7):  # dips (a re-reported earlier progress): rows after an open row may be final
        progress[t] = progress[t - 6]
    shadow = rng.gamma(2.0, 1.0, (n_shadow, 4))
    shadow_p = np.minimum(1.0, np.arange(n_shadow) / 500)
    for capacity in (4096, 64):
        tr = WorkloadTracker(spec, interval_s=1.0)
        tr.live = Series(capacity)
        i = j = 0
        compared = finite = 0
        while i < n_live:
            # the shadow sometimes lags the live run, so recent rows wait for it
            if j < n_shadow and rng.random() < 0.5:
                k = int(rng.integers(1, 12))
                tr.shadow.extend(
                    [TelemetrySample(0.01 * m, *shadow[m], progress=shadow_p[m]) for m in range(j, min(n_shadow, j + k))]
                )
                j += k
            else:
                k = int(rng.integers(1, 6))
                tr.live.extend(
                    [TelemetrySample(1.0 + t, 1.0, 1.0, 1.0, 1.0, progress=progress[t]) for t in range(i, min(n_live, i + k))]
                )
                i += k
            if not len(tr.live):
                continue
            kept = tr.aligned_now()
            whole = tr.aligned_shadow(0)
            wrapped = tr.live.total > len(tr.live)
            skip = RATE_WINDOW if wrapped else 0  # rows that lost their window
            np.testing.assert_array_equal(kept[skip:], whole[skip:])
            if not wrapped:  # the ratio is over the run so far: the buffer's rows until it wraps
                np.testing.assert_allclose(tr.level_ratio_now(), level_ratio(tr.live.values, whole), rtol=1e-12)
            compared += 1
            finite += int(np.isfinite(kept).any(axis=1).sum())
        assert compared > 50 and finite > 0
        assert tr._now_redo > tr.live.total - len(tr.live)  # rows became final: not all redone


def test_the_kept_level_ratio_counts_final_rows_after_an_open_one():
    """A live run that re-reports an earlier progress: the row after one the shadow has
    not reached yet is already final, and the ratio must count it now, not only later."""
    from prae.config import ShadowSpec, WorkloadSpec
    from prae.engine.tracker import WorkloadTracker
    from prae.model.combination import level_ratio

    spec = WorkloadSpec(name="w", kind="etl", shadow=ShadowSpec(mode="sample", fraction=0.05))
    tr = WorkloadTracker(spec, interval_s=1.0)
    tr.shadow.extend([TelemetrySample(0.1 * i, 1.0 + i, 2.0, 3.0, 4.0, progress=i / 100) for i in range(51)])
    for t, p in enumerate([0.1, 0.2, 0.3, 0.9, 0.25]):
        tr.live.extend([TelemetrySample(10.0 + t, 5.0 * (t + 1), 1.0, 1.0, 1.0, progress=p)])
    rows = tr.aligned_now()
    assert np.isnan(rows[3]).all() and np.isfinite(rows[4]).all()  # open, then final
    np.testing.assert_allclose(tr.level_ratio_now(), level_ratio(tr.live.values, tr.aligned_shadow(0)), rtol=1e-12)


def test_the_peak_from_kept_block_maxima_equals_scanning_the_window():
    """``Series.peak`` takes the max of kept maxima of whole blocks plus the partial rows at
    both ends: equal to scanning the window's rows, for any window, with unknown values and
    irregular sampling, before and after the buffer wraps (capacity not a multiple of a block)."""
    from prae.engine.tracker import PEAK_BLOCK, Series

    rng = np.random.default_rng(7)
    s = Series(capacity=300)
    t = 0.0
    checked = 0
    while s.total < 1500:
        batch = []
        for _ in range(int(rng.integers(1, 40))):
            t += float(rng.uniform(0.5, 1.5))
            v = rng.gamma(2.0, 1.0, 4)
            v[rng.random(4) < 0.1] = np.nan
            batch.append(TelemetrySample(t, *v, progress=0.0))
        s.extend(batch)
        vals, ts = s.values, s.ts
        for seconds in (0.0, 10.0, 100.0, 3 * PEAK_BLOCK, 250.0, 1e9):
            recent = vals[np.searchsorted(ts, ts[-1] - seconds, side="left") :]
            top = np.where(np.isnan(recent), -np.inf, recent).max(axis=0)
            np.testing.assert_array_equal(s.peak(seconds), np.where(np.isfinite(top), top, np.nan))
            checked += 1
    assert checked > 100


def timed_loop(tmp_path, telemetry: ScriptedTelemetry, clock: FakeClock) -> tuple[EngineLoop, FeedbackStore]:
    """A loop whose forecasts are stamped and whose ticks are timed by ``clock``."""
    cfg = config(tmp_path)
    store = FeedbackStore(cfg.run.store_dir)
    broker = ReservationBroker(FakePlacementBackend(capacity=16), None, "t-")
    loop = EngineLoop(
        cfg, telemetry, OracleForecaster(telemetry), BrokerAllocator(broker), store, clock=clock, timer=clock
    )
    return loop, store


def cpu_forecasts(store: FeedbackStore) -> tuple[np.ndarray, np.ndarray]:
    """(workload, issued_at) of every stored forecast, one row each."""
    fc = store.read("forecasts")
    cpu = fc.filter(np.array(fc.column("resource").to_pylist()) == "cpu")
    return np.array(cpu.column("workload").to_pylist()), np.array(cpu.column("issued_at").to_pylist())


class StallingTelemetry(ScriptedTelemetry):
    """'steps' sends no sample on ticks 8-11 (its sampler is stuck), and the poll at tick 8
    takes 2.5 s."""

    def poll(self) -> dict[str, Polled]:
        out = super().poll()
        if 8 <= self.t <= 11:
            out["steps"] = Polled(live_status=out["steps"].live_status, shadow_status=out["steps"].shadow_status)
        if self.t == 8:
            self.clock.advance(2.5)
        return out


def test_a_workload_without_a_new_sample_gets_no_repeated_forecast_and_slow_ticks_are_counted(tmp_path):
    clock = FakeClock()
    telemetry = StallingTelemetry(clock)
    loop, store = timed_loop(tmp_path, telemetry, clock)
    loop.run(sleep=clock.advance)
    names, issued = cpu_forecasts(store)
    for name in ("steady", "steps"):
        times = issued[names == name]
        assert len(times) == len(set(times.tolist())), name  # one forecast per live sample at most
    # 'steady' was forecast at every tick from its third sample on; 'steps' missed its 4 ticks
    assert (names == "steady").sum() == 30 - 2
    assert (names == "steps").sum() == 30 - 2 - 4
    timing = loop.timing.summary()
    assert timing["ticks"] == loop.ticks and timing["late"] == 1
    assert timing["max_s"] == pytest.approx(2.5) and timing["phase_max_s"]["poll"] == pytest.approx(2.5)
    line = timing_text(timing)
    assert "1 longer than the interval" in line and "slowest phase: poll, 2.500 s" in line


class GridTelemetry(ScriptedTelemetry):
    """Like the real samplers: one sample at every whole second of the clock (the grid of
    ``prae.engine.schedule``), delivered at the first poll after it."""

    def __init__(self, clock: FakeClock, length: int = 30) -> None:
        super().__init__(clock, length)
        self.next_ts = math.floor(clock.now) + 1.0
        self.end_ts = self.next_ts + length - 1

    def poll(self) -> dict[str, Polled]:
        stamps = []
        while self.next_ts <= min(self.clock.now, self.end_ts):
            stamps.append(self.next_ts)
            self.next_ts += 1.0
        done = self.next_ts > self.end_ts
        self.t = int(self.next_ts - self.end_ts + self.length - 1)  # what the oracle reads
        out = {}
        for name in ("steady", "steps"):
            out[name] = Polled(
                live=[TelemetrySample(ts, demand(name, self.t), GIB, 1e6, 0.0, 0.5) for ts in stamps],
                live_status=RoleStatus(exit_code=0 if done else None, cost_cpu_seconds=10.0),
                shadow_status=RoleStatus(exit_code=0, cost_cpu_seconds=0.0),
            )
        return out


@pytest.mark.parametrize("start", [1000.0, 1000.5, 1000.97])
def test_ticks_follow_the_samplers_grid_so_an_oversleeping_loop_loses_no_forecast(tmp_path, start):
    """Each sleep oversleeps by 0.15 s (a busy machine). A loop that sleeps "the interval
    minus the tick" drifts against the samplers and, every few ticks, finds no new sample:
    that tick's forecast is lost (4-5 of 27 here, before). On the grid every sample from the
    third on is forecast, whatever the phase the run started in."""
    clock = FakeClock(start)
    telemetry = GridTelemetry(clock)
    loop, store = timed_loop(tmp_path, telemetry, clock)
    tick_times = []
    real_tick = loop.tick

    def tick():
        tick_times.append(clock.now)
        return real_tick()

    loop.tick = tick
    loop.run(sleep=lambda s: clock.advance(s + 0.15))
    names, issued = cpu_forecasts(store)
    samples = int(telemetry.end_ts - math.floor(start))  # 30
    for name in ("steady", "steps"):
        # (the last sample comes with the exit code: a finished workload is not forecast)
        assert sorted(issued[names == name].tolist()) == [math.floor(start) + k for k in range(3, samples)]
    # after the first, every tick was half an interval (+ the oversleep) after a grid point
    assert all(abs((t % 1.0) - 0.65) < 1e-6 for t in tick_times[1:]), tick_times[:5]


class GatedStore(FeedbackStore):
    """Its writes wait for ``gate`` (a slow disk)."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.gate.set()

    def _write_buffers(self) -> int:
        self.gate.wait(5.0)
        return super()._write_buffers()


class DiskReadingRetrainer(CountingRetrainer):
    """Records how many telemetry rows a retraining would read from disk when it starts."""

    def __init__(self, root) -> None:
        super().__init__()
        self.root = root
        self.rows_on_disk: list[int] = []

    def start(self, version: int) -> None:
        self.rows_on_disk.append(FeedbackStore(self.root).read("telemetry").num_rows)
        super().start(version)


def test_a_due_retraining_waits_for_its_flush_on_the_flush_thread_not_in_the_tick(tmp_path):
    """Before, the tick that started a retraining wrote the store itself (the run reads it):
    a slow disk held every workload's forecast. Now the flush runs on its thread and the
    retraining starts at the first tick after it has finished, with every row before it."""
    clock = FakeClock()
    cfg = config(tmp_path)  # retrain every 5 s
    telemetry = ScriptedTelemetry(clock)
    store = GatedStore(cfg.run.store_dir)
    retrainer = DiskReadingRetrainer(cfg.run.store_dir)
    broker = ReservationBroker(FakePlacementBackend(capacity=16), None, "t-")
    loop = EngineLoop(cfg, telemetry, OracleForecaster(telemetry), BrokerAllocator(broker), store, retrainer, clock=clock)
    for _ in range(5):
        loop.tick()
        clock.advance(1.0)
    while store.flushing():  # the periodic flush of tick 5
        time.sleep(0.01)
    store.gate.clear()  # the disk stalls
    rows_before = telemetry.t * 4  # 2 workloads x (live + shadow) a tick, all polled so far
    t0 = time.monotonic()
    loop.tick()  # due: starts the flush
    clock.advance(1.0)
    loop.tick()  # the flush is still writing: no retraining yet
    assert time.monotonic() - t0 < 2.0  # neither tick waited for the disk (5 s)
    assert retrainer.started == [] and store.flushing()
    store.gate.set()
    while store.flushing():
        time.sleep(0.01)
    clock.advance(1.0)
    loop.tick()
    assert retrainer.started == [1]
    assert retrainer.rows_on_disk[0] >= rows_before + 4  # everything up to the due tick


class SlowSwapForecaster(OracleForecaster):
    """Its swap (a Serve redeploy) takes until ``loaded`` is set; the old model answers
    meanwhile. ``fail`` makes the swap raise instead."""

    def __init__(self, telemetry: ScriptedTelemetry, fail: bool = False) -> None:
        super().__init__(telemetry)
        self.loaded = threading.Event()
        self.fail = fail

    def swap(self, checkpoint: str) -> str:
        self.loaded.wait(5.0)
        if self.fail:
            raise RuntimeError("replica failed to load the checkpoint")
        return super().swap(checkpoint)


@pytest.mark.parametrize("fail", [False, True])
def test_a_hot_swap_loads_on_its_own_thread_while_the_ticks_go_on(tmp_path, fail):
    """Before, the tick that got a promoted checkpoint redeployed Serve itself and waited
    for every replica to load it (1.4 s of a tick under load): every workload's forecast
    waited. Now the ticks go on with the old model and the swap is recorded once done; a
    failed swap keeps the old model."""
    clock = FakeClock()
    cfg = config(tmp_path)
    telemetry = ScriptedTelemetry(clock)
    forecaster = SlowSwapForecaster(telemetry, fail=fail)
    store = FeedbackStore(cfg.run.store_dir)
    retrainer = CountingRetrainer()
    broker = ReservationBroker(FakePlacementBackend(capacity=16), None, "t-")
    loop = EngineLoop(cfg, telemetry, forecaster, BrokerAllocator(broker), store, retrainer, clock=clock)
    while loop._swap is None:  # until the retraining's checkpoint is being swapped in
        loop.tick()
        clock.advance(1.0)
        while store.flushing():  # as in run_loop: a flush ends within an interval
            time.sleep(0.001)
        assert clock.now < 1030
    t0 = time.monotonic()
    for _ in range(3):  # the swap is still loading: ticks go on, with the old model
        loop.tick()
        clock.advance(1.0)
    assert time.monotonic() - t0 < 2.5  # no tick waited for the swap (5 s)
    assert loop.swaps == [] and loop.model_version == "v0"
    forecaster.loaded.set()
    loop._swap.thread.join(5.0)
    loop.tick()
    versions = store.read("forecasts").column("model_version").to_pylist()
    if fail:
        assert loop.swaps == [] and loop.model_version == "v0" and set(versions) == {"v0"}
    else:
        assert [(s.version_before, s.version_after) for s in loop.swaps] == [("v0", "v1")]
        assert loop.model_version == "v1"



class ListSink:
    """Keeps every publication."""

    def __init__(self) -> None:
        self.publications: list[list] = []

    def publish(self, points) -> None:
        self.publications.append(list(points))


def test_the_loop_publishes_its_metrics_counters_adding_up_and_gauges_as_they_are(tmp_path):
    from prae.engine.metrics import METRICS, PUBLISH_EVERY_S

    clock = FakeClock()
    cfg = config(tmp_path)
    telemetry = ScriptedTelemetry(clock)
    sink = ListSink()
    store = FeedbackStore(cfg.run.store_dir)
    loop = EngineLoop(
        cfg, telemetry, OracleForecaster(telemetry, fail_at={4}), BrokerAllocator(ReservationBroker(FakePlacementBackend(capacity=16), None, "t-")),
        store, CountingRetrainer(), clock=clock, metrics=sink,
    )
    run_loop(loop, clock)
    pubs = sink.publications
    assert 30 / PUBLISH_EVERY_S <= len(pubs) <= 30 / PUBLISH_EVERY_S + 3  # every 5 s of ticks, and the end
    every = [p for pub in pubs for p in pub]
    assert {p.name for p in every} <= set(METRICS)
    for p in every:
        assert {k for k, _ in p.tags} == set(METRICS[p.name].tag_keys), p

    def total(name, **tags):
        return sum(p.value for p in every if p.name == name and all(p.tag_dict.get(k) == v for k, v in tags.items()))

    # counters: the sum of what each publication added is the run's total
    assert total("prae_ticks_total") == loop.ticks
    assert total("prae_fallback_ticks_total") == loop.fallback_ticks == 1
    assert total("prae_hot_swaps_total") == len(loop.swaps) >= 1
    fc = store.read("forecasts").to_pylist()
    for name in ("steady", "steps"):
        mine = [r for r in fc if r["workload"] == name and r["resource"] == "cpu" and r["actual"] is not None]
        inside = [r for r in mine if r["q0.1"] <= r["actual"] <= r["q0.9"]]
        assert total("prae_forecasts_resolved_total", workload=name, resource="cpu") == len(mine) > 10
        assert total("prae_forecasts_inside80_total", workload=name, resource="cpu") == len(inside)
    # gauges: the middle publication shows the workloads running, using and holding what they did
    mid = {(p.name, p.tags): p.value for p in pubs[2]}
    t_mid = 15  # the third publication comes after the tick at 3 x 5 s
    assert mid[("prae_workload_running", (("workload", "steps"),))] == 1.0
    assert mid[("prae_usage", (("resource", "cpu"), ("workload", "steps")))] == demand("steps", t_mid)
    assert mid[("prae_forecast", (("quantile", "q0.5"), ("resource", "cpu"), ("workload", "steps")))] > 0
    assert mid[("prae_reserved", (("resource", "cpu"), ("workload", "steps")))] >= demand("steps", t_mid)
    for pub in pubs[1:]:  # one version serving at a time (the first tick forecasts nothing yet)
        assert sum(p.value for p in pub if p.name == "prae_model_info") == 1.0
    # the last one: nothing running, nothing held
    last = {(p.name, p.tags): p.value for p in pubs[-1]}
    assert last[("prae_workload_running", (("workload", "steps"),))] == 0.0
    assert last[("prae_reserved", (("resource", "cpu"), ("workload", "steps")))] == 0.0
    swapped = loop.swaps[-1].version_after
    assert last[("prae_model_info", (("version", swapped),))] == 1.0 and last[("prae_model_info", (("version", "v0"),))] == 0.0


def test_tick_timing_keeps_a_histogram_not_every_tick_and_its_quantiles_are_within_half_a_percent():
    """Before, every tick's duration was kept: a long-lived engine's list grew by 86 400 a day."""
    from prae.engine.tick_timing import N_BINS, TickTiming

    rng = np.random.default_rng(0)
    d = np.concatenate([rng.lognormal(np.log(0.2), 0.5, 50_000), [3.0, 0.00005]])
    it = iter(np.repeat(d, 2) * np.tile([0.0, 1.0], d.size) + np.repeat(np.arange(d.size) * 10.0, 2))
    timing = TickTiming(interval_s=1.0, clock=lambda: next(it))
    for _ in d:
        with timing.tick():
            pass
    s = timing.summary()
    assert s["ticks"] == d.size and s["late"] == int((d > 1.0).sum()) and s["max_s"] == 3.0
    assert s["p50_s"] == pytest.approx(np.median(d), rel=0.005, abs=0.0005)
    assert s["p95_s"] == pytest.approx(np.quantile(d, 0.95), rel=0.005, abs=0.0005)
    assert timing.last == pytest.approx(0.00005) and timing.counts.size == N_BINS  # fixed size
