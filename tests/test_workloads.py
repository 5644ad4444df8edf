"""Workloads as child process trees, without Ray: kinds, shadows, isolation, bad definitions."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prae.config import Phase, Profile, ShadowSpec, WorkloadSpec, parse_config
from prae.errors import ConfigError, WorkloadError
from prae.telemetry.sample import TelemetrySample
from prae.workloads import forkserver
from prae.workloads.process import WorkloadProcess
from prae.workloads.sandbox import landlock_abi
from tests.fakes import process_alive

SMALL = {
    "etl": {"rows": 60_000, "partitions": 4, "customers": 5_000},
    "train": {"samples": 40_000, "epochs": 3, "hidden": 128},
    "replay": {"steps": 6, "step_s": 0.4, "mem_max": 64 * 1024**2, "disk_max": 8e6, "net_max": 8e6},
    "service": {"steps": 6, "step_s": 0.5, "rps_max": 80.0, "cache_mb": 16.0},
}

USER_MODULE = textwrap.dedent(
    """
    import os, signal, time
    from pathlib import Path

    def spin(ctx):
        n, t = 0, time.time()
        blob = bytearray(30 * 1024 * 1024)
        while time.time() - t < (0.3 if ctx.is_shadow else 1.5):
            n += 1
            ctx.report_progress(min(1.0, (time.time() - t) / 1.5), "spin")
        (ctx.data_dir / "out.bin").write_bytes(os.urandom(4_000_000))
        os.sync()
        return {"n": n, "role": ctx.role, "fraction": ctx.fraction, "picked": ctx.select(list(range(100)))}

    def crash_if_shadow(ctx):
        if ctx.is_shadow:
            raise RuntimeError("shadow blew up")
        return spin(ctx)

    def hang_if_shadow(ctx):
        if ctx.is_shadow:
            time.sleep(3600)
        return spin(ctx)

    def vandal(ctx):
        # A shadow that tries to damage the live run: overwrite, delete, rename its data,
        # and kill its process.
        target = Path(ctx.params["victim_dir"]) / "data" / "precious.txt"
        tried = {}
        for name, act in [
            ("overwrite", lambda: target.write_text("corrupted")),
            ("delete", lambda: target.unlink()),
            ("rename", lambda: os.rename(target, ctx.work_dir / "stolen")),
            ("new_file", lambda: (target.parent / "planted.txt").write_text("x")),
            ("kill_live", lambda: os.kill(int(ctx.params["victim_pid"]), signal.SIGKILL)),
        ]:
            try:
                act()
                tried[name] = "done"
            except OSError as exc:
                tried[name] = type(exc).__name__
        (ctx.work_dir / "mine.txt").write_text("own dir is fine")
        return tried
    """
)


@pytest.fixture()
def user_module(tmp_path, monkeypatch) -> Path:
    mod_dir = tmp_path / "usermods"
    mod_dir.mkdir()
    (mod_dir / "prae_test_jobs.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(mod_dir))
    monkeypatch.setenv("PYTHONPATH", str(mod_dir))
    return mod_dir


def run_to_end(
    wp: WorkloadProcess, timeout_s: float = 90.0, interval_s: float = 0.25
) -> list[TelemetrySample]:
    """Start (if needed) and sample until the workload exits."""
    if wp.pid is None:
        wp.start()
    samples = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            time.sleep(interval_s)
            samples.append(wp.sample())
            if wp.exit_code() is not None:
                return samples
        raise AssertionError(f"{wp} did not finish in {timeout_s}s")
    finally:
        wp.stop(grace_s=1.0)


def wait_for(done: Callable[[], bool], timeout_s: float, step_s: float = 0.1) -> None:
    """Poll ``done`` until it holds or ``timeout_s`` passes (the caller asserts what it needs)."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(step_s)


def run_together(*wps: WorkloadProcess, timeout_s: float = 90.0) -> list[list[TelemetrySample]]:
    """Start them all and sample each until every one has exited."""
    for wp in wps:
        wp.start()
    out: list[list[TelemetrySample]] = [[] for _ in wps]
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            time.sleep(0.25)
            for wp, samples in zip(wps, out, strict=True):
                if wp.exit_code() is None or not samples or samples[-1].mem > 0:
                    samples.append(wp.sample())
            if all(wp.exit_code() is not None for wp in wps):
                return out
        raise AssertionError(f"{wps} did not finish in {timeout_s}s")
    finally:
        for wp in wps:
            wp.stop(grace_s=1.0)


def assert_uses(samples: list[TelemetrySample], resources: tuple[str, ...]) -> None:
    arr = np.stack([s.as_array() for s in samples])
    names = ("cpu", "mem", "disk", "net")
    for r in resources:
        assert arr[:, names.index(r)].max() > 0, (
            f"{r} never measured above 0: {arr[:, names.index(r)]}"
        )


def start_pair(s: WorkloadSpec, tmp_path: Path) -> tuple[WorkloadProcess, WorkloadProcess]:
    """The live run and its shadow, started together as the engine starts them."""
    live = WorkloadProcess(s, "live", tmp_path / "live")
    shadow = WorkloadProcess(s, "shadow", tmp_path / "shadow")
    live.start()
    shadow.start()
    return live, shadow


def spec(kind: str, **kw: Any) -> WorkloadSpec:
    params = kw.pop("params", SMALL.get(kind, {}))
    return WorkloadSpec(name=kw.pop("name", f"t-{kind}"), kind=kind, params=params, **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- kinds


USES = {
    "etl": ("cpu", "mem", "disk"),
    "train": ("cpu", "mem", "disk"),
    "replay": ("cpu", "mem", "disk", "net"),
    "service": ("cpu", "mem", "disk", "net"),
}


@pytest.mark.parametrize("kind", list(USES))
def test_builtin_runs_and_uses_its_resources(kind, tmp_path) -> None:
    wp = WorkloadProcess(spec(kind), "live", tmp_path / "live")
    # 50 ms samples: a phase of these small runs can last well under 0.1 s on a quiet machine
    samples = run_to_end(wp, interval_s=0.05)
    assert wp.exit_code() == 0, wp.error()
    assert_uses(samples, USES[kind])
    assert samples[-1].progress == 1.0
    if kind in ("etl", "train"):
        assert len({s.phase for s in samples if s.phase}) >= 3  # several distinct phases reported
    progress = [s.progress for s in samples if not math.isnan(s.progress)]
    assert progress == sorted(progress)
    assert wp.result() and wp.cost_cpu_seconds > 0.3


def test_sample_shadow_is_smaller_and_sandboxed(tmp_path) -> None:
    s = spec(
        "etl",
        params={**SMALL["etl"], "rows": 200_000},
        shadow=ShadowSpec(mode="sample", fraction=0.1),
    )
    shadow = WorkloadProcess(s, "shadow", tmp_path / "shadow")
    run_to_end(shadow)
    assert shadow.exit_code() == 0, shadow.error()
    assert shadow.result()["rows"] == 20_000
    if landlock_abi() >= 1:
        assert shadow.meta()["sandbox"].startswith("landlock")


def test_python_kind_gets_a_context(tmp_path, user_module) -> None:
    s = spec("python", entrypoint="prae_test_jobs:spin", shadow=ShadowSpec(fraction=0.2))
    live, shadow = start_pair(s, tmp_path)
    samples = run_to_end(live)
    run_to_end(shadow)
    assert live.exit_code() == 0, live.error()
    assert shadow.exit_code() == 0, shadow.error()
    assert_uses(samples, ("cpu", "mem", "disk"))
    assert live.result()["role"] == "live" and live.result()["picked"] == list(range(100))
    picked = shadow.result()["picked"]
    assert shadow.result()["fraction"] == 0.2 and len(picked) == 20 and picked != list(range(20))
    assert (tmp_path / "shadow" / "data" / "out.bin").exists()


def test_command_kind_gets_its_role_through_the_environment(tmp_path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(
        textwrap.dedent(
            """\
            #!/bin/sh
            echo "0.5 half" >> "$PRAE_PROGRESS_FILE"
            head -c 3000000 /dev/urandom > "$PRAE_DATA_DIR/blob"
            sync
            i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done
            echo "{\\"role\\": \\"$PRAE_ROLE\\", \\"fraction\\": $PRAE_FRACTION}" > "$PRAE_RESULT_FILE"
            echo "1.0 done" >> "$PRAE_PROGRESS_FILE"
            """
        )
    )
    script.chmod(0o755)
    wp = WorkloadProcess(spec("command", entrypoint=str(script)), "shadow", tmp_path / "shadow")
    samples = run_to_end(wp)
    assert wp.exit_code() == 0, wp.error()
    assert wp.result() == {"role": "shadow", "fraction": 0.05}
    assert samples[-1].progress == 1.0 and samples[-1].phase == "done"
    assert_uses(samples, ("cpu", "disk"))


def test_thread_pools_follow_the_roles_cpu_share(tmp_path, monkeypatch) -> None:
    """A 2.5-CPU live run gets 2 BLAS/OpenMP threads, its 0.5-CPU shadow 1 (what Ray
    sets for actors of those sizes); a value in the environment wins."""
    from prae.config import ResourceAmount, ShadowSpec

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    script = tmp_path / "env.sh"
    script.write_text(
        '#!/bin/sh\necho "{\\"omp\\": \\"$OMP_NUM_THREADS\\", \\"blas\\": '
        '\\"$OPENBLAS_NUM_THREADS\\", \\"mkl\\": \\"$MKL_NUM_THREADS\\"}" > "$PRAE_RESULT_FILE"\n'
    )
    script.chmod(0o755)
    s = dataclasses.replace(
        spec("command", entrypoint=str(script)),
        resources=ResourceAmount(cpu=2.5),
        shadow=ShadowSpec(mode="sample", fraction=0.05, resources=ResourceAmount(cpu=0.5)),
    )
    got = {}
    for role in ("live", "shadow"):
        wp = WorkloadProcess(s, role, tmp_path / role)
        run_to_end(wp)
        assert wp.exit_code() == 0, wp.error()
        got[role] = wp.result()
    assert got["live"] == {"omp": "2", "blas": "2", "mkl": "2"}
    assert got["shadow"] == {"omp": "1", "blas": "1", "mkl": "1"}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # e.g. set by Ray for the host actor
    wp = WorkloadProcess(s, "shadow", tmp_path / "preset")
    run_to_end(wp)
    assert wp.result() == {"omp": "3", "blas": "3", "mkl": "3"}


def test_failing_command_reports_its_exit_code(tmp_path) -> None:
    wp = WorkloadProcess(
        spec("command", entrypoint="sh -c 'echo boom >&2; exit 7'"), "live", tmp_path
    )
    run_to_end(wp)
    assert wp.exit_code() == 7
    assert "boom" in (wp.error() or "")
    assert wp.result() is None


# ----------------------------------------------------------------------------- shadows never hurt the live run


def test_crashing_shadow_leaves_the_live_run_alone(tmp_path, user_module) -> None:
    s = spec("python", entrypoint="prae_test_jobs:crash_if_shadow")
    live, shadow = start_pair(s, tmp_path)
    run_to_end(shadow)
    run_to_end(live)
    assert shadow.exit_code() == 1 and "shadow blew up" in (shadow.error() or "")
    assert live.exit_code() == 0 and live.result()["role"] == "live"


def test_hanging_shadow_is_stopped_at_its_timeout(tmp_path, user_module) -> None:
    s = spec("python", entrypoint="prae_test_jobs:hang_if_shadow", shadow=ShadowSpec(timeout_s=1.0))
    live, shadow = start_pair(s, tmp_path)
    t = time.monotonic()
    run_to_end(shadow, timeout_s=15)
    assert time.monotonic() - t < 8
    assert shadow.timed_out and shadow.exit_code() == 128 + 15
    assert "timeout_s" in (shadow.error() or "")
    run_to_end(live)
    assert live.exit_code() == 0


@pytest.mark.skipif(
    landlock_abi() < 6, reason="needs Landlock ABI 6 (Linux 6.12) for signal scoping"
)
def test_shadow_cannot_touch_live_data_or_process(tmp_path, user_module) -> None:
    live_dir = tmp_path / "live"
    (live_dir / "data").mkdir(parents=True)
    precious = live_dir / "data" / "precious.txt"
    precious.write_text("live results")
    victim = WorkloadProcess(spec("python", entrypoint="prae_test_jobs:spin"), "live", live_dir)
    victim.start()
    params = {"victim_dir": str(live_dir), "victim_pid": victim.pid}
    shadow = WorkloadProcess(
        spec("python", entrypoint="prae_test_jobs:vandal", params=params),
        "shadow",
        tmp_path / "shadow",
    )
    run_to_end(shadow)
    assert shadow.exit_code() == 0, shadow.error()
    tried = shadow.result()
    assert all(v != "done" for v in tried.values()), tried
    assert precious.read_text() == "live results"
    assert not (live_dir / "data" / "planted.txt").exists()
    assert (tmp_path / "shadow" / "mine.txt").exists()
    run_to_end(victim)
    assert victim.exit_code() == 0


def test_stop_ends_the_whole_tree_and_is_idempotent(tmp_path) -> None:
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
    wp = WorkloadProcess(
        spec("command", entrypoint=f'{sys.executable} -c "{code}"'), "live", tmp_path
    )
    wp.start()
    wait_for(lambda: bool(wp.sample()) and len(wp._tree_pids()) >= 2, 10.0)
    pids = wp._tree_pids()
    assert len(pids) >= 2
    wp.stop(grace_s=2.0)
    wp.stop()
    assert wp.exit_code() == 128 + 15
    assert not any(process_alive(pid) for pid in pids)
    # the lifeline's watcher was let go, and killed nothing (a kill of the gone group fails)
    assert wp._lifeline is not None and wp._lifeline.watcher.returncode == 0


HOST = """
import sys, time
from prae.config import WorkloadSpec
from prae.workloads.process import WorkloadProcess

wp = WorkloadProcess(WorkloadSpec(name="t-orphan", kind="command", entrypoint=sys.argv[2]), "live", sys.argv[1])
wp.start()
while len(wp._tree_pids()) < 2:
    time.sleep(0.05)
print(" ".join(map(str, wp._tree_pids())), flush=True)
time.sleep(600)
"""


def test_a_workload_dies_with_the_process_that_started_it(tmp_path) -> None:
    """The host (a Ray actor, in the engine) is SIGKILLed: nothing could stop the workload,
    in its own session, so it ran on unwatched. The lifeline kills its whole tree."""
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, str(tmp_path), f'{sys.executable} -c "{code}"'],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert host.stdout is not None
        pids = [int(p) for p in host.stdout.readline().split()]
        assert len(pids) >= 2 and all(process_alive(p) for p in pids)
    finally:
        host.kill()
        host.wait()
    wait_for(lambda: not any(process_alive(p) for p in pids), 10.0)
    survivors = [p for p in pids if process_alive(p)]
    for p in survivors:  # this test's own processes only
        os.kill(p, signal.SIGKILL)
    assert survivors == []


# ----------------------------------------------------------------------------- bad definitions


@pytest.mark.parametrize(
    ("kwargs", "role", "error", "match"),
    [
        (
            {"kind": "etl", "params": {"rowz": 5}},
            "live",
            ConfigError,
            r"params.rowz.*unknown parameter",
        ),
        (
            {"kind": "etl", "params": {"rows": "many"}},
            "live",
            ConfigError,
            r"params.rows.*must be int",
        ),
        ({"kind": "train", "params": {"epochs": 0}}, "live", ConfigError, r"params.epochs.*>= 1"),
        (
            {"kind": "python", "entrypoint": "no_such_module_xyz:f"},
            "live",
            ConfigError,
            r"not importable",
        ),
        (
            {"kind": "command", "entrypoint": "no-such-program-xyz --x"},
            "live",
            ConfigError,
            r"not an executable",
        ),
        (
            {"kind": "etl", "shadow": ShadowSpec(mode="mirror")},
            "live",
            ConfigError,
            r"takes no requests",
        ),
        (
            {"kind": "train", "shadow": ShadowSpec(mode="simulate")},
            "live",
            ConfigError,
            r"profile.phases",
        ),
        ({"kind": "tasks", "params": {"stages": "3 by 20"}}, "live", ConfigError, r"params.stages.*LANESxSECONDS"),
        ({"kind": "tasks", "params": {"stages": "0x20"}}, "live", ConfigError, r"params.stages.*lanes >= 1"),
        ({"kind": "tasks", "params": {"task_cpu": 2.0}}, "live", ConfigError, r"params.task_cpu.*<= 1"),
        ({"kind": "etl", "shadow": ShadowSpec(mode="none")}, "shadow", WorkloadError, r"no shadow"),
        ({"kind": "etl"}, "standby", WorkloadError, r"role must be"),
    ],
)
def test_bad_definitions_fail_before_running(kwargs, role, error, match, tmp_path) -> None:
    name = "bad"
    kind = kwargs.pop("kind")
    with pytest.raises(error, match=match):
        WorkloadProcess(WorkloadSpec(name=name, kind=kind, **kwargs), role, tmp_path)
    assert not (tmp_path / ".prae").exists()


def test_a_python_workload_that_cannot_load_says_why(tmp_path, user_module) -> None:
    wp = WorkloadProcess(
        spec("python", entrypoint="prae_test_jobs:no_such_function"), "live", tmp_path
    )
    run_to_end(wp)
    assert wp.exit_code() == 2
    assert "no_such_function" in (wp.error() or "")


def test_yaml_workloads_build(tmp_path) -> None:
    cfg = parse_config(
        {
            "workloads": [
                {"name": "etl", "kind": "etl", "params": {"rows": 1000}},
                {
                    "name": "tr",
                    "kind": "train",
                    "shadow": {"mode": "simulate", "fraction": 0.1},
                    "profile": {
                        "phases": [
                            {"name": "load", "progress_end": 0.2, "cpu": 1, "memory": "100MiB"}
                        ]
                    },
                },
            ]
        }
    )
    for w in cfg.workloads:
        WorkloadProcess(w, "live", tmp_path / w.name)
        WorkloadProcess(w, "shadow", tmp_path / w.name)
    assert os.listdir(tmp_path) == []


def test_profile_simulation_follows_the_phases(tmp_path) -> None:
    profile = Profile(
        phases=(
            Phase("load", 0.3, cpu=0.2, mem=40 * 1024**2),
            Phase("crunch", 0.8, cpu=0.9, mem=120 * 1024**2),
            Phase("save", 1.0, cpu=0.3, mem=60 * 1024**2),
        )
    )
    s = spec(
        "train",
        shadow=ShadowSpec(mode="simulate", fraction=0.05),
        profile=profile,
        params={"simulate_s": 4.0},
    )
    wp = WorkloadProcess(s, "shadow", tmp_path, env={"PRAE_SHADOW_NICE": "0"})
    samples = run_to_end(wp, interval_s=0.2)
    assert wp.exit_code() == 0, wp.error()
    by_phase: dict[str, list[TelemetrySample]] = {}
    for x in samples:
        by_phase.setdefault(x.phase, []).append(x)
    assert {"load", "crunch", "save"} <= set(by_phase)
    mem = {k: float(np.median([x.mem for x in v])) for k, v in by_phase.items()}
    cpu = {k: float(np.median([x.cpu for x in v])) for k, v in by_phase.items()}
    assert mem["crunch"] > mem["load"] + 50e6 and mem["crunch"] > mem["save"] + 30e6
    assert cpu["crunch"] > cpu["load"]  # 0.9 vs 0.2 cores asked; a busy machine gives less


def test_history_simulation_plays_the_previous_run(tmp_path) -> None:
    """``source: history``: the shadow plays the previous live run, binned by progress --
    here one that held 150 MB in its second half and wrote to disk only at its end."""
    from prae.workloads.history import progress_profile, to_bytes
    from prae.workloads.simulate import HISTORY_ENV

    progress = np.linspace(0.0, 1.0, 40)
    values = np.zeros((40, 4))
    values[:, 0] = 0.5
    values[:, 1] = np.where(progress > 0.5, 150e6, 20e6)
    values[:, 2] = np.where(progress > 0.9, 40e6, 0.0)
    path = tmp_path / "history.npz"
    path.write_bytes(to_bytes(progress_profile(values, progress), duration_s=40.0))
    s = spec("train", shadow=ShadowSpec(mode="simulate", source="history", fraction=0.1))
    wp = WorkloadProcess(s, "shadow", tmp_path / "shadow", env={HISTORY_ENV: str(path)})
    samples = run_to_end(wp, interval_s=0.1)
    assert wp.exit_code() == 0, wp.error()
    assert wp.result()["simulated"] == "history"
    seen = [x for x in samples if not math.isnan(x.progress)]
    early = [x for x in seen if x.progress < 0.4]
    late = [x for x in seen if 0.6 < x.progress < 0.9]
    assert early and late
    assert np.median([x.mem for x in late]) > np.median([x.mem for x in early]) + 5e6  # 1/10 of 130 MB, and more
    assert max(x.disk for x in seen if x.progress > 0.85) > 0


@pytest.mark.parametrize(
    ("kind", "entrypoint"),
    [("command", "sh -c 'exit 7'"), ("python", "prae_test_jobs:crash_if_shadow")],
)
def test_a_simulated_shadow_plays_its_profile_not_the_users_code(
    tmp_path, user_module, kind: str, entrypoint: str, fork_env
) -> None:
    """The user's command or function would fail in a shadow; a simulated shadow plays
    the profile instead and never runs it (forked from the fork server that imports only
    the curve player)."""
    profile = Profile(phases=(Phase("only", 1.0, cpu=0.2, mem=30 * 1024**2),))
    s = spec(
        kind,
        entrypoint=entrypoint,
        shadow=ShadowSpec(mode="simulate"),
        profile=profile,
        params={"simulate_s": 1.0},
    )
    wp = WorkloadProcess(s, "shadow", tmp_path, env=fork_env)
    run_to_end(wp, interval_s=0.1)
    assert wp.exit_code() == 0, wp.error()
    assert wp.result()["simulated"] == "profile"
    assert wp.forked and [p.name.split("-")[0] for p in _sockets(fork_env)] == ["curve"]


def test_a_history_shadow_needs_mode_simulate() -> None:
    with pytest.raises(ConfigError, match=r"workloads\[0\]\.shadow\.source.*mode: simulate"):
        parse_config(
            {"workloads": [{"name": "n", "kind": "etl", "shadow": {"mode": "sample", "source": "history"}}]}
        )
    cfg = parse_config(
        {"workloads": [{"name": "n", "kind": "etl", "shadow": {"mode": "simulate", "source": "history"}}]}
    )
    WorkloadProcess(cfg.workloads[0], "shadow", Path("/nonexistent/unused"))  # no profile needed


def test_mirror_shadow_gets_a_fraction_of_live_requests(tmp_path) -> None:
    params = {**SMALL["service"], "steps": 8, "idle_exit_s": 5.0}
    s = spec("service", params=params, shadow=ShadowSpec(mode="mirror", fraction=0.3))
    shadow = WorkloadProcess(s, "shadow", tmp_path / "shadow")
    live = WorkloadProcess(s, "live", tmp_path / "live")  # finds the shadow beside it
    shadow_samples, live_samples = run_together(shadow, live)
    assert live.exit_code() == 0 and shadow.exit_code() == 0, (live.error(), shadow.error())
    mirrored = live.result()["mirror"]
    got = shadow.result()["requests"]
    # A copy that timed out at the live end may still have been served: got >= sent.
    assert got >= mirrored["sent"] > 0, (mirrored, got)
    assert 0.15 < got / live.result()["requests"] < 0.45, (mirrored, got)
    assert_uses(live_samples, USES["service"])
    assert_uses(shadow_samples, ("cpu", "mem", "net"))
    assert max(x.progress for x in shadow_samples if not math.isnan(x.progress)) > 0.5


def test_live_service_ignores_a_dead_mirror_target(tmp_path) -> None:
    s = spec("service", shadow=ShadowSpec(mode="mirror", fraction=0.5))
    live = WorkloadProcess(s, "live", tmp_path / "live", env={"PRAE_MIRROR_TO": "127.0.0.1:9"})
    run_to_end(live)
    assert live.exit_code() == 0, live.error()
    assert live.result()["mirror"]["sent"] == 0 and live.result()["requests"] > 0


def test_tasks_shadow_plays_the_stage_plan_first(tmp_path) -> None:
    """Without Ray: the shadow of a tasks job is its stage plan as a resource curve, in
    ``fraction`` of the time: cores = lanes x task_cpu, reported stage by stage."""
    from prae.workloads.tasks import parse_stages, stage_curve

    stages = parse_stages("t", "1x4, 3x2")
    assert [(s.lanes, s.seconds) for s in stages] == [(1, 4.0), (3, 2.0)]
    curve = stage_curve({"task_cpu": 0.5, "task_mem_mb": 10.0}, stages)
    assert list(curve.cpu) == [0.5] * 4 + [1.5] * 2
    assert curve.phases[0] == "stage0" and curve.phases[-1] == "stage1"
    spec = WorkloadSpec(
        name="t", kind="tasks", params={"stages": "1x4,3x2", "task_cpu": 0.5}, shadow=ShadowSpec(fraction=0.25)
    )
    wp = WorkloadProcess(spec, "shadow", tmp_path)
    wp.start()
    samples = []
    while wp.exit_code() is None:
        samples.append(wp.sample())
        time.sleep(0.1)
    assert wp.exit_code() == 0, wp.error()
    assert wp.result()["steps"] == 6 and wp.result()["step_s"] == 0.25
    phases = [s.phase for s in samples if s.phase]
    assert "stage0" in phases and "stage1" in phases


def test_tasks_stage_waits_on_the_resubmitted_ref_of_a_stranded_task() -> None:
    """Without Ray: a task the placer resubmits (its group went before it started) is
    waited on under its new ref; the stranded ref is never waited on again."""
    from prae.workloads.tasks import Stage, _run_stage

    class FakeRay:
        """Refs finish one wait after they are submitted, except the stranded one (never)."""

        def __init__(self) -> None:
            self.submitted: list[str] = []
            self.waited: list[list[str]] = []

        def wait(self, refs, num_returns=1, timeout=None):
            self.waited.append(list(refs))
            assert len(self.waited) < 50, "waiting for ever on a stranded task"
            ready = [r for r in refs if r != "t0"][:num_returns]
            return ready, [r for r in refs if r not in ready]

        def get(self, ref):
            return 0.0

    fake = FakeRay()

    def submit(seconds: float) -> str:
        fake.submitted.append(f"t{len(fake.submitted)}")
        return fake.submitted[-1]

    swaps = [[("t0", "again")]]
    done: list[float] = []
    waits = _run_stage(fake, submit, Stage(2, 2.0), 1.0, done.append, lambda: swaps.pop() if swaps else [])
    assert sum(done) == 4.0  # both lanes' work, the stranded task's second submission included
    assert len(waits) == 4
    assert all("t0" not in w for w in fake.waited[1:])


def test_timeline_shadow_is_resolved_by_its_samples_and_costs_its_fraction(tmp_path) -> None:
    """A 5 % shadow of 1-s steps sampled every 0.2 s: 0.4-s steps at 1/8 of the amplitude,
    not 0.05-s steps (8 to a sample, averaged away) at full amplitude; the cost is 5 % either way."""
    from prae.workloads.curve import Curve, shadow_timeline

    assert shadow_timeline(1.0, 0.05, 0.4) == pytest.approx((0.4, 0.125))
    assert shadow_timeline(1.0, 0.05, 0.02) == pytest.approx((0.05, 1.0))  # fast sampling: compress fully
    assert shadow_timeline(0.1, 0.05, 0.4) == pytest.approx((0.1, 0.05))  # never slower than the live run
    live = Curve(np.array([0.5, 1.0, 0.25]), np.full(3, 8e6), np.zeros(3), np.zeros(3), 1.0)
    sh = live.shadow(0.05, 0.4)
    assert math.isclose((sh.cpu * sh.step_s).sum(), 0.05 * (live.cpu * live.step_s).sum())
    assert np.allclose(sh.cpu / sh.cpu.max(), live.cpu / live.cpu.max())  # the same shape

    s = spec("replay", shadow=ShadowSpec(mode="sample", fraction=0.1))
    wp = WorkloadProcess(s, "shadow", tmp_path / "shadow", env={"PRAE_SAMPLE_INTERVAL_S": "0.1"})
    run_to_end(wp)
    assert wp.exit_code() == 0, wp.error()
    assert wp.result()["step_s"] == pytest.approx(0.2)  # 0.4-s live steps x 0.1 -> 0.04 s, raised to 2 x 0.1 s


def test_progress_estimate_moves_the_last_report_on_by_one_step_at_most() -> None:
    from prae.workloads.progress import UNKNOWN, Progress, ProgressEstimate

    est = ProgressEstimate()
    assert math.isnan(est.at(UNKNOWN, 1.0))
    assert est.at(Progress(0.40, "", 10.0), 10.2) == 0.40  # one report: no rate yet
    assert est.at(Progress(0.41, "", 10.5), 10.5) == pytest.approx(0.41)
    assert est.at(Progress(0.41, "", 10.5), 10.8) == pytest.approx(0.416)  # the worked number
    assert est.at(Progress(0.41, "", 10.5), 30.0) == pytest.approx(0.42)  # never past the next step
    assert est.at(Progress(0.995, "", 11.0), 11.4) == 1.0  # capped at 1
    # uneven steps: moved past the next report, then held until the reports catch up
    est = ProgressEstimate()
    est.at(Progress(0.1, "", 0.0), 0.0)
    est.at(Progress(0.5, "", 1.0), 1.0)
    assert est.at(Progress(0.5, "", 1.0), 1.9) == pytest.approx(0.86)
    assert est.at(Progress(0.6, "", 2.0), 2.0) == pytest.approx(0.86)  # not back to 0.6
    assert est.at(Progress(0.2, "", 3.0), 3.0) == pytest.approx(0.2)  # the workload went back itself


# ----------------------------------------------------------------------------- fork server


@pytest.fixture
def fork_env(tmp_path_factory) -> dict[str, str]:
    """A fork-server directory of the test's own, and servers that exit 2 s after their
    last shadow (so none outlives the test session)."""
    return {
        forkserver.DIR_ENV: str(tmp_path_factory.mktemp("forkserver")),
        forkserver.IDLE_ENV: "2",
    }


def _sockets(env: dict[str, str]) -> list[Path]:
    return sorted(Path(env[forkserver.DIR_ENV]).glob("*.sock"))


def test_forked_shadows_pay_the_imports_once_and_run_as_fresh_ones_do(tmp_path, fork_env) -> None:
    s = spec("train", shadow=ShadowSpec(mode="sample", fraction=0.1))
    first, second = (WorkloadProcess(s, "shadow", tmp_path / f"s{i}", env=fork_env) for i in (1, 2))
    samples = [run_to_end(wp, interval_s=0.05) for wp in (first, second)]
    third = WorkloadProcess(s, "shadow", tmp_path / "s3", env=fork_env)
    third.start()
    wait_for(lambda: not forkserver.running(third.pid), 60.0, step_s=0.01)
    # gone means exited: the server's report is awaited, not missed for a sample
    assert third.exit_code() == 0
    third.stop()
    for wp, got in zip((first, second), samples, strict=True):
        assert wp.forked and wp.exit_code() == 0, wp.error()
        assert wp.result()["samples"] < SMALL["train"]["samples"]  # the shadow's sample
        assert_uses(got, ("cpu", "mem"))
        assert got[-1].progress == 1.0
        if landlock_abi() >= 1:
            assert wp.meta()["sandbox"].startswith("landlock")
    # The first shadow is charged the server's `import torch` (seconds of CPU on any machine);
    # the second is charged only what the server did since: both sum to the server's CPU.
    charge = [wp.fork_charge_cpu_s for wp in (first, second)]
    assert charge[0] > 0.5 and charge[1] < 0.2 * charge[0], charge
    assert first.cost_cpu_seconds > charge[0] and second.cost_cpu_seconds > charge[1]
    assert len(_sockets(fork_env)) == 1  # one server for both
    wait_for(lambda: not _sockets(fork_env), 15.0, step_s=0.2)
    assert not _sockets(fork_env), "the idle fork server did not exit"


LONG_REPLAY = {**SMALL["replay"], "steps": 60, "step_s": 1.0}


def test_stopping_a_forked_shadow_ends_its_process_group(tmp_path, fork_env) -> None:
    s = spec("replay", params=LONG_REPLAY, shadow=ShadowSpec(mode="sample", fraction=0.5))
    wp = WorkloadProcess(s, "shadow", tmp_path / "shadow", env=fork_env)
    wp.start()
    try:
        time.sleep(1.5)
        assert wp.forked and wp.exit_code() is None
        wp.sample()
        pids = set(wp.pids)  # the player, and its CPU burners once it has started them
        assert wp.pid in pids
    finally:
        wp.stop(grace_s=1.0)
    assert wp.exit_code() in (128 + 15, 128 + 9)
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]


def test_a_forked_shadow_dies_with_the_process_that_watched_it(tmp_path, fork_env) -> None:
    """A host that dies without stopping its shadow (a killed Ray actor) leaves no shadow."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from prae.config import ShadowSpec, WorkloadSpec
        from prae.workloads.process import WorkloadProcess
        s = WorkloadSpec(name="orphan", kind="replay", params={LONG_REPLAY!r},
                         shadow=ShadowSpec(mode="sample", fraction=0.5))
        wp = WorkloadProcess(s, "shadow", {str(tmp_path / "shadow")!r}, env={fork_env!r})
        wp.start()
        print(wp.pid, wp.forked, flush=True)
        time.sleep(120)
        """
    )
    import subprocess

    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid, forked = host.stdout.readline().split()
        assert forked == "True"
        assert os.path.exists(f"/proc/{pid}")
    finally:
        host.kill()
        host.wait()
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10.0)
    assert not os.path.exists(f"/proc/{pid}"), "the shadow outlived its host"


def test_shadow_starts_fresh_where_the_fork_server_cannot_run(tmp_path, caplog) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {forkserver.DIR_ENV: str(blocker / "sub")}  # cannot be made: a file is in the way
    s = spec("etl", shadow=ShadowSpec(mode="sample", fraction=0.1))
    wp = WorkloadProcess(s, "shadow", tmp_path / "shadow", env=env)
    run_to_end(wp)
    assert wp.exit_code() == 0, wp.error()
    assert not wp.forked
    assert "starts as a fresh process" in caplog.text and forkserver.ENABLE_ENV in caplog.text
    too_long = {forkserver.DIR_ENV: str(tmp_path / ("d" * 120))}  # no Unix socket there
    long_dir = WorkloadProcess(s, "shadow", tmp_path / "long", env=too_long)
    run_to_end(long_dir)
    assert long_dir.exit_code() == 0 and not long_dir.forked
    assert f"set {forkserver.DIR_ENV} shorter" in caplog.text
    off = WorkloadProcess(s, "shadow", tmp_path / "off", env={forkserver.ENABLE_ENV: "0"})
    run_to_end(off)
    assert off.exit_code() == 0 and not off.forked


def test_a_forked_shadow_dies_with_its_fork_server(tmp_path, fork_env) -> None:
    """The server is the shadow's parent: if it dies, nothing can report the shadow's exit,
    so the shadow is ended, and shows as exited (-1) rather than running on unwatched."""
    import signal

    from prae.telemetry.process_tree import read_stat

    s = spec("replay", params=LONG_REPLAY, shadow=ShadowSpec(mode="sample", fraction=0.5))
    wp = WorkloadProcess(s, "shadow", tmp_path / "shadow", env=fork_env)
    wp.start()
    try:
        server = read_stat(wp.pid).ppid
        assert wp.forked and server != os.getpid()
        os.kill(server, signal.SIGKILL)  # the server this test's shadow started
        wait_for(lambda: wp.exit_code() is not None, 10.0)
        assert wp.exit_code() == -1
        wait_for(lambda: not forkserver.running(wp.pid), 5.0)
        assert not forkserver.running(wp.pid)  # an orphan's zombie waits for whoever adopted it
    finally:
        wp.stop(grace_s=0.5)



def test_a_fork_server_survives_a_client_that_speaks_nonsense(tmp_path, fork_env) -> None:
    import socket

    s = spec("etl", shadow=ShadowSpec(mode="sample", fraction=0.1))
    first = WorkloadProcess(s, "shadow", tmp_path / "a", env=fork_env)
    run_to_end(first)
    (sock,) = _sockets(fork_env)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:
        bad.connect(str(sock))
        bad.sendall(b"{not json\n")
        assert bad.recv(100) == b""  # the server hangs up on it
    second = WorkloadProcess(s, "shadow", tmp_path / "b", env=fork_env)
    run_to_end(second)
    assert first.forked and second.forked and second.exit_code() == 0, second.error()
    # the same server forked both: the second paid no imports of a new one
    assert second.fork_charge_cpu_s < 0.2 * first.fork_charge_cpu_s


SLOW_DEP = "import time\n\n_t = time.process_time()\nwhile time.process_time() - _t < 0.6:  # a heavy import\n    pass\n"
PRELOAD_JOB = (
    "import prae_slow_dep\n\n\ndef job(ctx):\n"
    "    return {'role': ctx.role, 'edited': getattr(prae_slow_dep, 'EDITED', False)}\n"
)


def test_a_python_shadow_forks_from_a_server_that_preloads_its_modules(
    tmp_path, fork_env, monkeypatch
) -> None:
    mods = tmp_path / "mods"
    mods.mkdir()
    dep = mods / "prae_slow_dep.py"
    dep.write_text(SLOW_DEP)
    (mods / "prae_preload_job.py").write_text(PRELOAD_JOB)
    monkeypatch.setenv("PYTHONPATH", str(mods))
    monkeypatch.syspath_prepend(str(mods))
    s = spec(
        "python",
        entrypoint="prae_preload_job:job",
        shadow=ShadowSpec(fraction=0.5, preload=("prae_slow_dep",)),
    )

    def shadow(name: str) -> WorkloadProcess:
        wp = WorkloadProcess(s, "shadow", tmp_path / name, env=fork_env)
        run_to_end(wp, interval_s=0.05)
        assert wp.forked and wp.exit_code() == 0, wp.error()
        return wp

    first, second = shadow("a"), shadow("b")
    assert first.fork_charge_cpu_s > 0.5  # the server's import of the heavy module
    assert second.fork_charge_cpu_s < 0.1 and second.cost_cpu_seconds < 0.5  # not paid again
    # The module is edited: the next shadow runs the new code, from a new server.
    dep.write_text(SLOW_DEP + "EDITED = True\n")
    later = time.time_ns() + 2 * 10**9
    os.utime(dep, ns=(later, later))
    third = shadow("c")
    assert not first.result()["edited"] and third.result()["edited"]
    assert third.fork_charge_cpu_s > 0.5
    live = WorkloadProcess(s, "live", tmp_path / "live", env=fork_env)
    run_to_end(live)
    assert live.exit_code() == 0 and not live.forked  # the user's own process, as they start it


def test_a_hung_fork_server_launcher_means_a_fresh_shadow(tmp_path, fork_env, monkeypatch, caplog):
    monkeypatch.setattr(forkserver, "_SERVER_MAIN", "import time; time.sleep(30)")
    monkeypatch.setattr(forkserver, "START_TIMEOUT_S", 0.5)
    s = spec("etl", shadow=ShadowSpec(mode="sample", fraction=0.1))
    wp = WorkloadProcess(s, "shadow", tmp_path / "shadow", env=fork_env)
    run_to_end(wp)
    assert wp.exit_code() == 0 and not wp.forked
    assert "launcher hung" in caplog.text


IMPORTS_DURING_RUN = textwrap.dedent(
    """
    import importlib, json, sys, sysconfig
    from pathlib import Path
    from prae.config import ShadowSpec, WorkloadSpec
    from prae.workloads import forkserver, launch
    from prae.workloads.context import WorkloadContext
    from prae.workloads.kinds import builtin_module, check_spec

    kind, params, work = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
    for name in forkserver.PRELOADS[kind]:  # what its fork server imports
        importlib.import_module(name)
    run = builtin_module(kind).run
    before = set(sys.modules)
    spec = WorkloadSpec(name="t", kind=kind, params=params, shadow=ShadowSpec(mode="sample", fraction=0.1))
    for sub in ("data", "tmp", ".prae"):
        (work / sub).mkdir(parents=True)
    ctx = WorkloadContext(name="t", kind=kind, role="shadow", shadow_mode="sample", fraction=0.1,
                          params=check_spec(spec, "shadow"), work_dir=work, spec=spec)
    run(ctx)
    stdlib = sysconfig.get_paths()["stdlib"]
    late = [m for m in set(sys.modules) - before
            if not str(getattr(sys.modules[m], "__file__", None) or stdlib).startswith(stdlib)]
    print(json.dumps(sorted(late)))
    """
)


@pytest.mark.parametrize("kind", sorted(k for k in forkserver.PRELOADS if k in SMALL))
def test_a_builtin_shadow_imports_nothing_its_fork_server_did_not(kind, tmp_path) -> None:
    # A library a shadow imports lazily would be paid by every forked shadow (pandas via
    # pyarrow.dataset: ~0.45 CPU-s, a fifth of an etl shadow); the server must preload it.
    import json
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", IMPORTS_DURING_RUN, kind, json.dumps(SMALL[kind]), str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
