"""Run one role (live or shadow) of a workload as a child process tree and sample it. No Ray.

Layout of ``workdir`` (the role's own directory; the engine uses ``<run>/<workload>/live`` and
``<run>/<workload>/shadow``)::

    data/               the role's generated or sampled data
    tmp/                TMPDIR of the role
    .prae/launch.json   what to run (spec, role, fraction, seed, tag)
    .prae/progress      last reported progress (see prae.workloads.progress)
    .prae/result.json   what the workload returned
    .prae/meta.json     sandbox used, timings
    .prae/error.txt     why it failed
    .prae/stdout.log, .prae/stderr.log
    .prae/endpoint      host:port of a service role

A shadow is isolated from the live run: its own directory (it is never told the live paths),
Landlock write rules and signal scoping (see :mod:`prae.workloads.sandbox`), a lower CPU
priority (``nice`` 5 by default, ``PRAE_SHADOW_NICE``), and its own process group that
:meth:`WorkloadProcess.stop` ends. Its ``timeout_s`` is enforced here by a watchdog thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import prae
from prae.config import WorkloadSpec
from prae.errors import WorkloadError
from prae.telemetry.process_tree import TAG_ENV, ProcessTreeSampler, children_of, read_stat
from prae.telemetry.sample import TelemetrySample
from prae.workloads import forkserver
from prae.workloads.context import tag_ray_job_env
from prae.workloads.kinds import check_spec, command_argv
from prae.workloads.lifeline import Lifeline
from prae.workloads.progress import ProgressEstimate, read_progress
from prae.workloads.specio import spec_to_dict

log = logging.getLogger(__name__)

Role = Literal["live", "shadow"]
_PROJECT_ROOT = Path(prae.__file__).resolve().parents[1]
DEFAULT_SHADOW_NICE = 5
# The child's BLAS and OpenMP thread pools (and Arrow's, which reads OMP_NUM_THREADS) get
# as many threads as the role's CPU share, at least 1: what Ray gives a task or actor of
# that many CPUs, so a workload runs alike under the engine's host actors and in a plain
# WorkloadProcess (bench/). A value already in the environment wins. Unset, a 0.5-CPU
# shadow started one OpenBLAS thread per host core in each of its Python processes. The
# libraries read them at import, so the fork servers are keyed by the same variables.
THREAD_ENV = forkserver.IMPORT_TIME_ENV
# How long stop() waits for the fork server to report a killed shadow's exit.
FORKED_REAP_TIMEOUT_S = 10.0
# Where a shadow may write besides its own directory: device files (/dev/null, /dev/shm).
SHADOW_WRITABLE_DEFAULT = ("/dev",)


class WorkloadProcess:
    """Runs one workload role as a child process tree and samples it.

    ``spec`` is checked when the object is built: a bad definition raises
    :class:`~prae.errors.ConfigError` (or :class:`~prae.errors.WorkloadError` for a shadow
    that cannot exist) before anything runs. Methods may be called from two threads (a
    sampling thread and the one that stops it).
    """

    def __init__(
        self,
        spec: WorkloadSpec,
        role: Role,
        workdir: str | os.PathLike[str],
        seed: int = 0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.params = check_spec(spec, role)
        self.spec = spec
        self.role: Role = role
        self.workdir = Path(workdir).resolve()
        self.meta_dir = self.workdir / ".prae"
        self.seed = seed
        self.extra_env = dict(env or {})
        self.fraction = spec.shadow.fraction if role == "shadow" else 1.0
        self.tag = f"{spec.name}-{role}-{uuid.uuid4().hex[:12]}"
        self.timed_out = False
        self._popen: Any = None
        self._sampler: ProcessTreeSampler | None = None
        self._code: int | None = None
        self._result: dict[str, Any] | None = None
        self._lock = threading.RLock()
        self._watchdog: threading.Timer | None = None
        self._lifeline: Lifeline | None = None
        self._started_at: float | None = None
        self._last_ts: float | None = None
        self._mem_byte_seconds = 0.0
        self._stopped = False
        self._progress = ProgressEstimate()  # progress at each sample, not at the last report

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        with self._lock:
            if self._popen is not None:
                raise WorkloadError(
                    f"workload '{self.spec.name}' ({self.role}) was already started"
                )
            for sub in ("data", "tmp", ".prae"):
                (self.workdir / sub).mkdir(parents=True, exist_ok=True)
            for stale in ("progress", "result.json", "meta.json", "error.txt", "endpoint"):
                (self.meta_dir / stale).unlink(missing_ok=True)
            env = self._child_env()
            launch: dict[str, Any] = {
                "spec": spec_to_dict(self.spec),
                "role": self.role,
                "fraction": self.fraction,
                "params": self.params,
                "seed": self.seed,
                "tag": self.tag,
                "inputs": self._inputs(),
                "nice": int(env.get("PRAE_SHADOW_NICE", DEFAULT_SHADOW_NICE)),
                "writable": self._shadow_writable(env),
            }
            if self.spec.kind == "command":
                launch["argv"] = command_argv(self.spec)
            (self.meta_dir / "launch.json").write_text(json.dumps(launch, default=str))
            started = time.time()
            preload = forkserver.preload_for(self.spec, self.role, env)
            self._popen = None if preload is None else self._fork(preload, env)
            if self._popen is None:
                self._popen = self._spawn(env)
                # Its session dies with this process, however this one dies (see lifeline).
                try:
                    self._lifeline = Lifeline(self._popen.pid)
                except OSError as exc:  # the workload runs on; only a crash would orphan it
                    log.warning("workload '%s' (%s) has no lifeline: %s", self.spec.name, self.role, exc)
            self._started_at = started
            self._last_ts = started
            self._sampler = ProcessTreeSampler(self._popen.pid, start_ts=started, tag=self.tag)
            timeout = self.spec.shadow.timeout_s if self.role == "shadow" else None
            if timeout:
                self._watchdog = threading.Timer(timeout, self._on_timeout)
                self._watchdog.daemon = True
                self._watchdog.start()

    def _fork(
        self, preload: forkserver.Preload, env: dict[str, str]
    ) -> forkserver.ForkedChild | None:
        """The shadow forked from the node's fork server; None (a fresh process) if it fails."""
        try:
            return forkserver.spawn(
                preload,
                self.workdir,
                env,
                self.meta_dir / "stdout.log",
                self.meta_dir / "stderr.log",
            )
        except (forkserver.ForkServerError, OSError, ValueError) as exc:
            log.warning(
                "shadow of '%s' starts as a fresh process: %s (%s=0 skips the fork server)",
                self.spec.name,
                exc,
                forkserver.ENABLE_ENV,
            )
            return None

    def _spawn(self, env: dict[str, str]) -> Any:
        import subprocess

        with (
            open(self.meta_dir / "stdout.log", "ab") as out,
            open(self.meta_dir / "stderr.log", "ab") as err,
        ):
            return subprocess.Popen(
                [sys.executable, "-m", "prae.workloads.launch", str(self.workdir)],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # own session and process group: stop() ends all of it
                close_fds=True,
            )

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        py_path = [str(_PROJECT_ROOT), os.getcwd()]
        if env.get("PYTHONPATH"):
            py_path.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(py_path))
        env.update(
            {
                "PRAE_ROLE": self.role,
                "PRAE_WORKLOAD": self.spec.name,
                "PRAE_FRACTION": repr(self.fraction),
                "PRAE_SHADOW_MODE": self.spec.shadow.mode,
                "PRAE_WORK_DIR": str(self.workdir),
                "PRAE_DATA_DIR": str(self.workdir / "data"),
                "PRAE_PROGRESS_FILE": str(self.meta_dir / "progress"),
                "PRAE_RESULT_FILE": str(self.meta_dir / "result.json"),
                "PRAE_PARAMS": json.dumps(self.params, default=str),
                "PRAE_SEED": str(self.seed),
                TAG_ENV: self.tag,
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.role == "shadow":
            env["TMPDIR"] = str(self.workdir / "tmp")
        share = (self.spec.shadow.resources if self.role == "shadow" else self.spec.resources).cpu
        threads = env.get("OMP_NUM_THREADS") or str(max(1, int(share or 1)))
        for var in THREAD_ENV:
            env.setdefault(var, threads)
        if (
            self.spec.kind == "service"
            and self.role == "live"
            and self.spec.shadow.mode == "mirror"
        ):
            # The engine's layout puts the shadow beside the live dir; PRAE_MIRROR_TO overrides.
            env.setdefault(
                "PRAE_MIRROR_FILE", str(self.workdir.parent / "shadow" / ".prae" / "endpoint")
            )
        _add_ray_address(env)
        tag_ray_job_env(env, self.tag)
        return env

    def _inputs(self) -> list[str]:
        """``params["inputs"]``: a path, a glob or a list of them, resolved against the cwd."""
        raw = self.params.get("inputs") if self.spec.kind in ("python", "command") else None
        if not raw:
            return []
        import glob

        patterns = [raw] if isinstance(raw, str) else list(raw)
        found: list[str] = []
        for pattern in patterns:
            matches = sorted(glob.glob(os.path.expanduser(str(pattern))))
            found.extend(str(Path(m).resolve()) for m in (matches or [pattern]))
        return found

    def _shadow_writable(self, env: Mapping[str, str]) -> list[str]:
        extra = [p for p in env.get("PRAE_SHADOW_WRITABLE", "").split(os.pathsep) if p]
        if "RAY_ADDRESS" in env or self.spec.kind == "python":
            extra.append(
                env.get("RAY_TMPDIR", "/tmp/ray")
            )  # a Ray driver writes its session logs there
        return [*SHADOW_WRITABLE_DEFAULT, *extra]

    def _on_timeout(self) -> None:
        if self.exit_code() is None:
            self.timed_out = True
            log.warning(
                "shadow of '%s' ran past timeout_s=%s: stopping it",
                self.spec.name,
                self.spec.shadow.timeout_s,
            )
            self.stop(grace_s=2.0)

    # ------------------------------------------------------------------ observation

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    @property
    def forked(self) -> bool:
        """Whether this role was forked from the node's fork server (see ``forkserver``)."""
        return isinstance(self._popen, forkserver.ForkedChild)

    @property
    def fork_charge_cpu_s(self) -> float:
        """The fork server's CPU charged to this role: all it spent since its previous fork
        (its imports, for the first shadow of a kind on the node); 0 if not forked."""
        return self._popen.charge_cpu_s if isinstance(self._popen, forkserver.ForkedChild) else 0.0

    def exit_code(self) -> int | None:
        """None while running; the exit code, or 128+N when killed by signal N."""
        with self._lock:
            self._reap(block=False)
            return self._code

    def _reap(self, block: bool) -> None:
        if self._popen is None or self._code is not None:
            return
        if isinstance(self._popen, forkserver.ForkedChild):
            self._reap_forked(self._popen, block)
            return
        try:
            pid, status, usage = os.wait4(self._popen.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status, usage = -1, None, None
        if pid == 0:
            return
        if self._lifeline is not None:
            # The root is reaped: its pid (the group's id) is free for reuse, and a watcher
            # left to fire later could kill someone else's group. Leftovers are stop()'s.
            self._lifeline.release()
        if status is None or usage is None:  # reaped by someone else
            self._code = self._popen.returncode if self._popen.returncode is not None else -1
            return
        code = os.waitstatus_to_exitcode(status)
        self._code = 128 - code if code < 0 else code
        self._popen.returncode = code  # keep subprocess from waiting on it again
        if self._sampler is not None:
            self._sampler.finish(
                usage.ru_utime + usage.ru_stime, (usage.ru_inblock + usage.ru_oublock) * 512.0
            )
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _reap_forked(self, child: forkserver.ForkedChild, block: bool) -> None:
        """The exit the fork server reports (it is the child's parent, not us).

        Once the child is gone, its exit is waited for: the server reaps it within
        milliseconds, but a sample taken in between would see the root vanish with no
        final totals, and count its CPU again when they came (see ``finish``)."""
        gone = not block and not forkserver.running(child.pid)
        done = child.poll(FORKED_REAP_TIMEOUT_S if block or gone else 0.0)
        if done is None:
            if not block:
                return
            child.close()  # the server kills what is left of it
            done = forkserver.ForkedExit(-1, None, None)
        self._code = done.code
        if self._sampler is not None and done.cpu_s is not None:
            self._sampler.finish(done.cpu_s, done.io_bytes)
        if self._watchdog is not None:
            self._watchdog.cancel()

    def sample(self) -> TelemetrySample:
        """Resources used since the previous call; cheap (a few /proc reads per process)."""
        with self._lock:
            if self._sampler is None:
                raise WorkloadError(
                    f"workload '{self.spec.name}' ({self.role}) has not been started"
                )
            self._reap(block=False)
            reading = self._sampler.sample()
            if self._last_ts is not None:
                self._mem_byte_seconds += reading.mem * max(0.0, reading.ts - self._last_ts)
            self._last_ts = reading.ts
        progress = read_progress(self.meta_dir / "progress")
        return TelemetrySample(
            ts=reading.ts,
            cpu=reading.cpu,
            mem=reading.mem,
            disk=reading.disk,
            net=reading.net,
            progress=self._progress.at(progress, reading.ts),
            phase=progress.phase,
        )

    def result(self) -> dict[str, Any] | None:
        """What the workload returned, once it finished successfully (None before, or on failure)."""
        if self._result is None:
            try:
                self._result = json.loads((self.meta_dir / "result.json").read_text())
            except (OSError, ValueError):
                return None
        return self._result

    def error(self) -> str | None:
        """Why the run failed: the workload's traceback, or the tail of its stderr."""
        code = self.exit_code()
        if code in (None, 0):
            return None
        if self.timed_out:
            return f"stopped after timeout_s={self.spec.shadow.timeout_s:g}"
        try:
            return (self.meta_dir / "error.txt").read_text()[-4000:]
        except OSError:
            pass
        try:
            tail = (self.meta_dir / "stderr.log").read_bytes()[-2000:].decode("utf-8", "replace")
        except OSError:
            tail = ""
        return f"exited with code {code}" + (f":\n{tail}" if tail else "")

    def meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.meta_dir / "meta.json").read_text())
        except (OSError, ValueError):
            return {}

    @property
    def endpoint(self) -> str | None:
        """``host:port`` of a service role once it listens."""
        try:
            return (self.meta_dir / "endpoint").read_text().strip() or None
        except OSError:
            return None

    @property
    def pids(self) -> frozenset[int]:
        """The processes the last sample counted (the tree, tagged Ray workers included)."""
        return frozenset() if self._sampler is None else self._sampler.pids

    @property
    def cost_cpu_seconds(self) -> float:
        """CPU-seconds the tree (tagged Ray workers included) used up to the last sample,
        plus, for a forked shadow, the fork server's CPU since its previous fork (its imports
        for the first shadow of a kind on the node)."""
        if self._sampler is None:
            return 0.0
        return self._sampler.cpu_seconds + self.fork_charge_cpu_s

    @property
    def cost_mem_byte_seconds(self) -> float:
        """∫ RSS dt over the samples taken (byte-seconds)."""
        return self._mem_byte_seconds

    @property
    def progress(self) -> float:
        return read_progress(self.meta_dir / "progress").fraction

    # ------------------------------------------------------------------ stopping

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the whole tree, SIGKILL what is left after ``grace_s``; idempotent.

        The tree here is the child's process group and session plus the root's descendants.
        Ray worker processes found by tag are left to Ray, which ends them with their driver.
        """
        with self._lock:
            if self._popen is None:
                return
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._stopped = True
            self._signal_tree(signal.SIGTERM)
        deadline = time.monotonic() + max(0.0, grace_s)
        while time.monotonic() < deadline:
            if self.exit_code() is not None and not self._tree_pids():
                break
            time.sleep(0.05)
        with self._lock:
            self._signal_tree(signal.SIGKILL)
            self._reap(block=True)  # which lets the lifeline go
            if self._sampler is not None:
                # Account the final totals for cost reporting; if that fails, the cost is
                # what was measured so far.
                with contextlib.suppress(Exception):
                    self._sampler.sample()

    def _tree_pids(self) -> set[int]:
        """Live processes of the child's session, and the root's descendants."""
        if self._popen is None:
            return set()
        root = self._popen.pid
        found: set[int] = set()
        todo = [root] if self._code is None else []
        for name in os.listdir("/proc"):
            if name.isdigit():
                st = read_stat(int(name))
                if st is not None and st.sid == root and st.pid != os.getpid():
                    todo.append(st.pid)
        while todo:
            pid = todo.pop()
            if pid in found:
                continue
            st = read_stat(pid)
            if st is None or (pid == root and self._code is not None):
                continue
            found.add(pid)
            todo.extend(children_of(pid))
        found.discard(os.getpid())
        return found

    def _signal_tree(self, sig: int) -> None:
        assert self._popen is not None
        if self._code is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, sig)
        for pid in self._tree_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def __repr__(self) -> str:
        return (
            f"WorkloadProcess({self.spec.name!r}, {self.role!r}, pid={self.pid}, code={self._code})"
        )


def _add_ray_address(env: dict[str, str]) -> None:
    """A workload started from inside a Ray worker joins that cluster (if it uses Ray at all)."""
    if "RAY_ADDRESS" in env or "ray" not in sys.modules:
        return
    ray = sys.modules["ray"]
    try:
        if ray.is_initialized():
            env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    except Exception:  # not connected: the workload's own ray.init decides
        pass
