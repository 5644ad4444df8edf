"""Start shadows by forking a process that has already imported what they need.

Why: a shadow runs a 5 % sample, but every fresh interpreter pays the imports in full --
``import torch`` alone is ~2.4 CPU-s on this project's 2-core machine, against a train
shadow's ~0.5 CPU-s of work and a live run of 12-18 CPU-s in ``bench/shadow_ablation.py``.
A fork server (a "zygote", as Android and multiprocessing's ``forkserver`` call it) pays the
imports once per node and kind; each shadow is then a ``fork`` (~0.01 CPU-s) that runs
:func:`prae.workloads.launch.main` as a fresh child would, with its own session, directory,
environment, stdout/stderr, ``nice`` and Landlock sandbox.

One server per (user, preload, thread settings, interpreter and prae checkout):
``<dir>/<preload>-<key>.sock``
(a preload is a built-in kind, ``curve`` for the simulate shadows that play a curve, or
``py-<hash>`` for a ``python`` workload's ``shadow.preload`` modules),
``dir`` = ``$PRAE_FORKSERVER_DIR`` or ``/tmp/prae-forkserver-<uid>``. The first client on a
node starts it (under a file lock); it detaches (double fork, own session), so it outlives the
Ray worker that started it and serves the next shadows on that node; it exits after
``$PRAE_FORKSERVER_IDLE_S`` (default 600) seconds without a shadow. The key includes the
BLAS/OpenMP thread variables (read by the libraries at import). Before each fork the server
checks the mtimes of the source files it imported that can be edited in place (``prae``'s
and the user's modules): if one changed, it answers ``{"stale"}``, unlinks its socket and
only sees its running shadows out, and the client starts a new one -- so a shadow never
runs older code than its live run.

Protocol (one Unix-socket connection per shadow, JSON lines): the client sends
``{"role_dir", "cwd", "env", "stdout", "stderr"}``; the server forks and answers
``{"pid", "charge_cpu_s"}``; when the child exits it sends ``{"exit", "cpu_s", "io_bytes"}``
(``wait4``'s rusage, like a parent's own) and closes. If the client's end closes first (its
host died), the server kills the child's process group: a shadow never outlives the process
that watches it.

Cost is charged in full: each shadow is charged the server's own CPU time since the previous
fork (``charge_cpu_s``), so the first shadow of a kind on a node pays the imports and the sum
over all shadows is the server's whole CPU time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import prae
from prae.config import WorkloadSpec
from prae.errors import WorkloadError

# What a server imports before it forks, by name: the built-ins that run in one Python
# process tree and import nothing that starts threads or connects anywhere at import
# (``tasks`` imports Ray), and "curve" for a simulate shadow that plays a resource curve
# (it needs none of its kind's imports: a curve shadow of ``train`` must not pay torch's).
# Also what a kind's run imports lazily: ``pq.read_table`` imports pyarrow.dataset, and with
# it pandas (~0.45 CPU-s an etl shadow would otherwise pay each time); group-bys
# pyarrow.acero; a seeded generator numpy.random; torch.save its serialisation config.
# tests/test_workloads.py checks that a built-in's run imports nothing more.
PRELOADS: dict[str, tuple[str, ...]] = {
    "etl": ("prae.workloads.etl", "pyarrow.dataset", "pyarrow.acero", "numpy.random"),
    "train": ("prae.workloads.train", "numpy.random", "torch.utils.serialization"),
    "replay": ("prae.workloads.replay",),
    "service": ("prae.workloads.service", "prae.workloads.tracesrc", "numpy.random"),
    "curve": ("prae.workloads.simulate",),
}
ENABLE_ENV = "PRAE_SHADOW_FORKSERVER"  # "0" starts every shadow as a fresh interpreter
DIR_ENV = "PRAE_FORKSERVER_DIR"
IDLE_ENV = "PRAE_FORKSERVER_IDLE_S"
DEFAULT_IDLE_S = 600.0
START_TIMEOUT_S = 30.0  # imports (torch) on a busy 2-core machine
# Read by native libraries when they load, so they must be the server's own.
IMPORT_TIME_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# -c rather than -m: ``prae.workloads`` imports this module before -m would run it
_SERVER_MAIN = "import sys; from prae.workloads.forkserver import main; main(sys.argv)"
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the terminating NUL
SHADOW_ONLY_ENV = ("TMPDIR", "RAY_JOB_CONFIG_JSON_ENV_VAR")
_PRAE_ROOT = str(Path(prae.__file__).resolve().parent) + os.sep


class ForkServerError(WorkloadError):
    """The fork server could not be started or reached (the caller starts a fresh process)."""


@dataclass(frozen=True)
class Preload:
    """What a server imports before forking: ``name`` names its socket, ``modules`` the
    imports (a built-in's module, the curve player, or a python workload's
    ``shadow.preload``)."""

    name: str
    modules: tuple[str, ...]


def preload_for(spec: WorkloadSpec, role: str, env: Mapping[str, str]) -> Preload | None:
    """The server a role is forked from; None: a fresh process. Only shadows: the live run
    is the user's own process, started as they would. A ``python`` workload's shadow is
    forked only when it names its ``shadow.preload``: importing user code in a server that
    forks is the user's call (a module that starts threads at import must not be forked)."""
    if role != "shadow" or env.get(ENABLE_ENV, "1") == "0":
        return None
    if spec.shadow_plays_curve:
        return Preload("curve", PRELOADS["curve"])
    if spec.kind in PRELOADS:
        return Preload(spec.kind, PRELOADS[spec.kind])
    if spec.kind == "python" and spec.shadow.preload:
        mods = spec.shadow.preload
        return Preload("py-" + hashlib.sha256(",".join(mods).encode()).hexdigest()[:10], mods)
    return None


def server_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get(DIR_ENV) or f"/tmp/prae-forkserver-{os.getuid()}")


def socket_path(preload: str, env: Mapping[str, str]) -> Path:
    """Per preload, thread settings, interpreter and ``prae`` checkout: a server never
    forks for another checkout, and ``_changed`` retires it when its code is edited."""
    threads = ",".join(env.get(v, "") for v in IMPORT_TIME_ENV)
    key = hashlib.sha256(f"{threads}|{sys.executable}|{_PRAE_ROOT}".encode()).hexdigest()[:12]
    return server_dir(env) / f"{preload}-{key}.sock"


# ---------------------------------------------------------------------------- client


@dataclass
class ForkedExit:
    code: int
    cpu_s: float | None  # None: the server died, the child's totals are unknown
    io_bytes: float | None


class ForkedChild:
    """A shadow forked by the server: its pid and the connection its exit arrives on.

    Not our child, so ``wait4`` cannot reap it; :meth:`poll` reads the exit the server
    reports. Closing the connection before the exit makes the server kill the child.
    """

    def __init__(
        self, pid: int, conn: socket.socket, charge_cpu_s: float, buf: bytes = b""
    ) -> None:
        """``buf``: what the server sent after its fork reply (the exit, if it came already)."""
        self.pid = pid
        self.charge_cpu_s = charge_cpu_s
        self._conn: socket.socket | None = conn
        self._buf = buf

    def poll(self, timeout_s: float | None = 0.0) -> ForkedExit | None:
        """The exit, once the server reported it; None while running. ``timeout_s`` None
        waits as long as it takes. If the server died first, the child's exit can no longer
        be known: its process group is killed (a shadow never outlives its server) and the
        exit is -1."""
        if self._conn is None:
            return None
        self._conn.settimeout(timeout_s)
        try:
            while b"\n" not in self._buf:
                data = self._conn.recv(4096)
                if not data:
                    return self._lost()
                self._buf += data
        except (BlockingIOError, TimeoutError):
            return None
        except OSError:
            return self._lost()
        self.close()
        msg = json.loads(self._buf.split(b"\n", 1)[0])
        return ForkedExit(int(msg["exit"]), float(msg["cpu_s"]), float(msg["io_bytes"]))

    def _lost(self) -> ForkedExit:
        self.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return ForkedExit(-1, None, None)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None


def spawn(
    preload: Preload,
    role_dir: Path,
    env: Mapping[str, str],
    stdout: Path,
    stderr: Path,
) -> ForkedChild:
    """Fork a role from the node's server for ``preload`` (started if need be)."""
    path = socket_path(preload.name, env)
    if len(str(path).encode()) > MAX_SOCKET_PATH:
        raise ForkServerError(
            f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes; set {DIR_ENV} shorter"
        )
    request = {
        "role_dir": str(role_dir),
        "cwd": str(role_dir),
        "env": dict(env),
        "stdout": str(stdout),
        "stderr": str(stderr),
    }
    # A server may exit idle just as we connect, or find its imported files changed on
    # disk ("stale"): then a new one.
    for attempt in (1, 2):
        conn = _connect(path)
        if conn is None:
            _start_server(preload, path, env)
            conn = _connect(path)
            if conn is None:
                raise ForkServerError(f"fork server '{preload.name}' at {path} did not answer")
        try:
            return _request(conn, path, request)
        except ForkServerError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _request(conn: socket.socket, path: Path, request: dict[str, object]) -> ForkedChild:
    reply = b""
    try:
        conn.settimeout(START_TIMEOUT_S)
        conn.sendall(json.dumps(request).encode() + b"\n")
        while b"\n" not in reply:
            data = conn.recv(4096)
            if not data:
                break
            reply += data
    except OSError as exc:
        conn.close()
        raise ForkServerError(f"fork server at {path}: {exc}") from exc
    if b"\n" not in reply:
        conn.close()
        raise ForkServerError(f"fork server at {path} closed before forking")
    line, rest = reply.split(b"\n", 1)
    msg = json.loads(line)
    if "stale" in msg:
        conn.close()
        raise ForkServerError(f"fork server at {path} runs an older {msg['stale']}")
    return ForkedChild(int(msg["pid"]), conn, float(msg["charge_cpu_s"]), rest)


def _connect(path: Path) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
    except OSError:
        s.close()
        return None
    return s


def _start_server(preload: Preload, path: Path, env: Mapping[str, str]) -> None:
    """Start the server for ``path`` unless another client just did; waits until it listens."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        probe = _connect(path)
        if probe is not None:
            probe.close()
            return
        # Not one shadow's own settings: its tag, Ray job config, TMPDIR
        server_env = {
            k: v for k, v in env.items() if not k.startswith("PRAE_") and k not in SHADOW_ONLY_ENV
        }
        server_env["PYTHONPATH"] = env.get("PYTHONPATH", "")
        for var in (DIR_ENV, IDLE_ENV):
            if var in env:
                server_env[var] = env[var]
        # The launcher forks the server, prints its pid and exits: the server is nobody's
        # child, so a Ray worker's exit (which kills its direct children) does not end it.
        log = path.with_suffix(".log")
        launcher = subprocess.Popen(
            [sys.executable, "-c", _SERVER_MAIN, str(path), ",".join(preload.modules), str(log)],
            env=server_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,
            cwd="/",
        )
        try:
            out, _ = launcher.communicate(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            launcher.kill()
            launcher.wait()
            raise ForkServerError(
                f"fork server '{preload.name}' launcher hung: {_tail(log)}"
            ) from exc
        if launcher.returncode != 0 or not out.strip().isdigit():
            raise ForkServerError(f"fork server '{preload.name}' did not start: {_tail(log)}")
        server_pid = int(out)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            probe = _connect(path)
            if probe is not None:
                probe.close()
                return
            if not running(server_pid):
                raise ForkServerError(f"fork server '{preload.name}' exited: {_tail(log)}")
            time.sleep(0.02)
    raise ForkServerError(
        f"fork server '{preload.name}' did not start within {START_TIMEOUT_S:g} s"
    )


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-1500:].strip() or "(no output)"
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------- server


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def serve(path: Path, modules: list[str], idle_s: float, spent_s: float = 0.0) -> None:
    """Import ``modules``, listen at ``path`` and fork shadows; ``spent_s``: CPU the
    launcher used before it forked this server (interpreter start, the prae imports),
    charged to the first shadow with the server's own."""
    import importlib

    from prae.workloads import launch

    for name in modules:  # the point: a shadow's imports, once
        importlib.import_module(name)
    sources = _own_sources()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp))
    listener.listen(64)
    os.replace(tmp, path)  # published only once it listens
    my_inode = path.stat().st_ino
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, socket.socket] = {}
    charged = -spent_s
    last_active = time.monotonic()
    while True:
        watched = [wake_r, *children.values()] + ([] if listener.fileno() < 0 else [listener])
        ready, _, _ = select.select(watched, [], [], 1.0)
        if listener in ready:
            conn, _ = listener.accept()
            try:
                conn.settimeout(10.0)
                request = _read_line(conn)
                changed = _changed(sources) if request is not None else None
                if changed is not None:
                    # Code it imported was edited: a new server must fork the next
                    # shadows. This one only sees its running shadows out.
                    _unlink_own(path, my_inode)
                    conn.sendall(json.dumps({"stale": changed}).encode() + b"\n")
                    conn.close()
                    listener.close()
                    idle_s = 0.0
                elif request is not None:
                    others = [
                        listener.fileno(),
                        wake_r,
                        wake_w,
                        *(c.fileno() for c in children.values()),
                    ]
                    pid = os.fork()
                    if pid == 0:
                        conn.close()
                        _run_child(launch, request, others)
                    now = _cpu_s()
                    conn.sendall(
                        json.dumps({"pid": pid, "charge_cpu_s": now - charged}).encode() + b"\n"
                    )
                    charged = now
                    conn.settimeout(None)
                    children[pid] = conn
                else:
                    conn.close()
            except (OSError, ValueError):  # a client gone, slow or speaking nonsense
                conn.close()
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        for pid, conn in list(children.items()):
            if conn in ready and pid in children and not _peek_open(conn):
                # the client is gone (its host died or gave up): so is the shadow
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        _reap(children)
        if children:
            last_active = time.monotonic()
        elif time.monotonic() - last_active > idle_s:
            _unlink_own(path, my_inode)
            return


def _unlink_own(path: Path, inode: int) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_ino == inode:  # a newer server may own the name now
            path.unlink()


def _own_sources() -> dict[str, int]:
    """Source files of the imported modules that may be edited while a server runs -- the
    user's code and ``prae`` itself (installed or not) -- with their mtimes. The
    interpreter's own and other installed libraries change only by reinstalling."""
    import sysconfig

    paths = sysconfig.get_paths()
    skip = tuple({paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"]})
    found: dict[str, int] = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not isinstance(file, str) or not file.endswith(".py"):
            continue
        if file.startswith(_PRAE_ROOT) or not file.startswith(skip):
            with contextlib.suppress(OSError):
                found[file] = os.stat(file).st_mtime_ns
    return found


def _changed(sources: dict[str, int]) -> str | None:
    """The first source file edited (or removed) since it was imported; None if none."""
    for file, mtime in sources.items():
        try:
            if os.stat(file).st_mtime_ns != mtime:
                return file
        except OSError:
            return file
    return None


def _reap(children: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        conn = children.pop(pid, None)
        if conn is None:
            continue
        msg = {
            "exit": 128 - code if code < 0 else code,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "io_bytes": (usage.ru_inblock + usage.ru_oublock) * 512.0,
        }
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(msg).encode() + b"\n")
        conn.close()


def _read_line(conn: socket.socket) -> dict[str, object] | None:
    buf = b""
    while b"\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    return json.loads(buf.split(b"\n", 1)[0])


def _peek_open(conn: socket.socket) -> bool:
    """False once the peer closed (a readable socket with nothing to read)."""
    try:
        return bool(conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return True
    except OSError:
        return False


def _run_child(launch: object, request: dict[str, object], close: list[int]) -> None:
    """In the forked child: become what ``python -m prae.workloads.launch <dir>`` would be."""
    code = 2
    try:
        os.setsid()  # own session and process group, as WorkloadProcess gives a fresh child
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for fd, key in ((1, "stdout"), (2, "stderr")):
            out = os.open(str(request[key]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(out, fd)
            os.close(out)
        os.chdir(str(request["cwd"]))
        env = request["env"]
        assert isinstance(env, dict)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        for entry in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
            if entry and entry not in sys.path:
                sys.path.insert(0, entry)
        import tempfile

        tempfile.tempdir = None  # TMPDIR is the shadow's own
        sys.argv = ["prae.workloads.launch", str(request["role_dir"])]
        try:
            code = launch.main(sys.argv)  # type: ignore[attr-defined]
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        with contextlib.suppress(Exception):
            sys.stderr.write(traceback.format_exc())
    launch._exit_now(code)  # type: ignore[attr-defined]


def main(argv: list[str]) -> None:
    """``<socket path> <module,module,...> <log>``: fork the server, print its pid, exit."""
    path, modules, log = Path(argv[1]), [m for m in argv[2].split(",") if m], argv[3]
    spent = _cpu_s()  # a forked process's CPU times start at 0: the server charges this too
    pid = os.fork()
    if pid != 0:  # the launcher: the server is re-parented, nobody's child
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()
        os._exit(0)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for target in (1, 2):
        os.dup2(fd, target)
    os.close(fd)
    idle = float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S))
    try:
        serve(path, modules, idle, spent)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)
