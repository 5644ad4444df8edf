"""Samples the resources a workload's whole process tree uses, straight from ``/proc``.

Who is in the tree
    The root (the process :class:`~prae.workloads.process.WorkloadProcess` started, in its own
    session), every descendant (``/proc/<pid>/task/*/children``), every process that appears in
    the root's session (so a daemonised grandchild whose parent died is still counted), and every
    process whose environment carries ``PRAE_WORKLOAD_TAG=<tag>``, with its descendants. The last
    rule is how Ray worker processes are found: they are children of the raylet, not of the
    workload, but the launcher tags the job's runtime_env so Ray starts them with the tag.

How each resource is measured (all Linux ``/proc``; no root, no eBPF)
    cpu   Δ(utime + stime + cutime + cstime) / Δt over the tree, from ``/proc/<pid>/stat``
          (10 ms ticks). ``cutime``/``cstime`` hold the children a process has reaped, so CPU
          spent by a short-lived child between two samples is counted when its parent reaps it.
          The root's final total comes from ``wait4``'s rusage (:meth:`finish`).
    mem   Σ RSS (``/proc/<pid>/stat`` rss × page size). Pages shared between processes of the
          tree (fork copy-on-write, Ray's shared-memory object store) count once per process
          that maps them: an over-estimate for multi-process trees. PSS (``smaps_rollup``) would
          be exact but costs a page-table walk per read.
    disk  Δ(read_bytes + write_bytes) / Δt from ``/proc/<pid>/io``: bytes the tree made the block
          layer fetch or dirtied in the page cache. Reads served from the page cache are not disk
          I/O and count 0; writes count when dirtied, not when flushed; truncated writes
          (``cancelled_write_bytes``) are not subtracted. Like CPU, a reaped child's I/O moves
          into its parent's counters, so nothing is lost between samples.
    net   Δ(TCP bytes acked + bytes received) / Δt over the sockets the tree's processes hold
          (``/proc/<pid>/fd`` → socket inode → ``sock_diag`` tcp_info, see
          :mod:`prae.telemetry.sockets`): TCP payload only, loopback included, UDP/UNIX not
          counted, a connection that opens and closes between two samples is missed, and
          loopback traffic between two processes of the tree counts twice (both ends).

Rates are averages since the previous call. The first call's rates are since ``start_ts`` (the
moment the root was spawned) when given, else they are 0 and serve as the baseline.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from prae.telemetry.sockets import TcpCounters, socket_inodes

TAG_ENV = "PRAE_WORKLOAD_TAG"
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
# A process judged not ours while younger than this is looked at again at every scan: it may
# not have exec'd yet (Ray starts a worker as setup_worker.py, which takes seconds on a busy
# machine and only then execs the worker with the job's runtime_env variables).
_ENV_SETTLE_S = 30.0
_YOUNG, _FINAL = 1, 2


@dataclass(frozen=True)
class TreeReading:
    """One sample of the tree, rates since the previous one."""

    ts: float
    dt: float
    cpu: float  # cores
    mem: float  # bytes
    disk: float  # bytes/s
    net: float  # bytes/s
    nprocs: int


@dataclass
class _Proc:
    pid: int
    start: int  # ticks since boot: (pid, start) names a process even across pid reuse
    ppid: int
    sid: int
    cpu: int  # ticks, utime + stime + cutime + cstime
    rss: int  # pages
    io: int = 0  # bytes, read_bytes + write_bytes
    io_ok: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start)


def read_stat(pid: int) -> _Proc | None:
    """Parse ``/proc/<pid>/stat`` (None when the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return _Proc(
            pid=pid,
            start=int(fields[19]),
            ppid=int(fields[1]),
            sid=int(fields[3]),
            cpu=int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14]),
            rss=int(fields[21]),
        )
    except (IndexError, ValueError):
        return None


def read_io(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    total = 0
    for line in raw.splitlines():
        if line.startswith((b"read_bytes:", b"write_bytes:")):
            total += int(line.split()[1])
    return total


def children_of(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return kids


def _has_tag(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return False
    return env.startswith(needle) or b"\0" + needle in env


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class ProcessTreeSampler:
    """Cumulative counters and rates of one process tree. Not thread-safe: one caller at a time.

    ``root_pid``  the process to follow (its session id is read once, at the first sample).
    ``start_ts``  unix time the root was spawned; the first sample's rates are since then.
    ``tag``       value of ``PRAE_WORKLOAD_TAG`` that marks foreign processes (Ray workers) as ours.
    ``scan_every_s``  how often the whole of ``/proc`` is scanned for session members and tagged
                  processes (the tree itself is walked at every sample).
    """

    def __init__(
        self,
        root_pid: int,
        *,
        start_ts: float | None = None,
        tag: str | None = None,
        measure_net: bool = True,
        scan_every_s: float = 2.0,
    ) -> None:
        self.root_pid = root_pid
        self.tag_needle = f"{TAG_ENV}={tag}\0".encode() if tag else None
        self.tcp = TcpCounters() if measure_net else None
        self.sid: int | None = None
        now_wall, now_boot = time.time(), _boottime()
        if start_ts is not None:
            self._prev_ts: float | None = start_ts
            self._prev_boot_ticks = (now_boot - (now_wall - start_ts)) * _TICK
        else:
            self._prev_ts = None
            self._prev_boot_ticks = now_boot * _TICK
        self._prev: dict[tuple[int, int], _Proc] = {}
        self._prev_sock: dict[int, int] = {}
        self._adopted: set[tuple[int, int]] = set()  # found by session or tag, kept while alive
        self._judged: dict[int, int] = {}  # pid -> _YOUNG or _FINAL: judged not ours
        self._last_scan = -math.inf
        self.scan_every_s = scan_every_s
        self.root_finished = False
        self._root_final: _Proc | None = None
        # Cumulative totals since the start (CPU-seconds, bytes).
        self.cpu_seconds = 0.0
        self.disk_bytes = 0.0
        self.net_bytes = 0.0
        self.pids: frozenset[int] = frozenset()

    # ------------------------------------------------------------------ membership

    def _scan_foreign(self, now_boot: float) -> list[int]:
        """New pids on the machine that belong to us by session or tag.

        Runs every ``scan_every_s`` (not every sample): a pid is judged from
        ``/proc/<pid>/stat`` (session) and ``/proc/<pid>/environ`` (tag), again at every scan
        while it is younger than ``_ENV_SETTLE_S`` (it may exec later), then never again. A
        process found late loses nothing: one born since the previous sample counts in full.
        """
        if now_boot - self._last_scan < self.scan_every_s:
            return []
        self._last_scan = now_boot
        found: list[int] = []
        try:
            listing = os.listdir("/proc")
        except OSError:
            return found
        pids = {int(n) for n in listing if n.isdigit()}
        for pid in [p for p in self._judged if p not in pids]:
            del self._judged[pid]
        adopted_pids = {p for p, _ in self._adopted}
        for pid in pids:
            if self._judged.get(pid) == _FINAL or pid in adopted_pids:
                continue
            st = read_stat(pid)
            if st is None:
                continue
            if (self.sid is not None and st.sid == self.sid) or (
                self.tag_needle is not None and _has_tag(pid, self.tag_needle)
            ):
                self._adopted.add(st.key)
                self._judged.pop(pid, None)
                found.append(pid)
            else:
                young = now_boot - st.start / _TICK < _ENV_SETTLE_S
                self._judged[pid] = _YOUNG if young else _FINAL
        return found

    def _collect(self, now_boot: float) -> dict[tuple[int, int], _Proc]:
        procs: dict[tuple[int, int], _Proc] = {}
        if self.sid is None and not self.root_finished:
            root = read_stat(self.root_pid)
            # Only a session leader's session is its own (WorkloadProcess starts one per root).
            if root is not None and root.sid == self.root_pid:
                self.sid = root.sid
        roots = [] if self.root_finished else [self.root_pid]
        roots += [pid for pid, _ in self._adopted]
        if self.sid is not None or self.tag_needle is not None:
            roots += self._scan_foreign(now_boot)
        todo = list(dict.fromkeys(roots))
        seen: set[int] = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            st = read_stat(pid)
            if st is None or (self.root_finished and pid == self.root_pid and st.sid != self.sid):
                continue
            procs[st.key] = st
            todo.extend(children_of(pid))
        self._adopted = {k for k in self._adopted if k in procs}
        for p in procs.values():
            io = read_io(p.pid)
            if io is not None:
                p.io, p.io_ok = io, True
        if self._root_final is not None:
            # The reaped root, once, with its final totals from wait4 (see finish()).
            procs[self._root_final.key] = self._root_final
            self._root_final = None
        return procs

    # ------------------------------------------------------------------ sampling

    def sample(self) -> TreeReading:
        now = time.time()
        mono_boot = _boottime()
        procs = self._collect(mono_boot)
        cpu_ticks, io_bytes = self._deltas(procs)
        net = self._net_delta(procs)
        mem = float(sum(p.rss for p in procs.values()) * _PAGE)
        dt = now - self._prev_ts if self._prev_ts is not None else 0.0
        self._prev_ts = now
        self._prev_boot_ticks = mono_boot * _TICK
        self._prev = procs
        self.pids = frozenset(p.pid for p in procs.values())
        cpu_s = cpu_ticks / _TICK
        self.cpu_seconds += cpu_s
        self.disk_bytes += io_bytes
        self.net_bytes += net
        if dt <= 0:
            return TreeReading(now, 0.0, 0.0, mem, 0.0, 0.0, len(procs))
        return TreeReading(now, dt, cpu_s / dt, mem, io_bytes / dt, net / dt, len(procs))

    def _deltas(self, procs: dict[tuple[int, int], _Proc]) -> tuple[float, float]:
        """Σ counter increments since the previous sample, CPU in ticks and I/O in bytes."""
        d_cpu = 0.0
        d_io = 0.0
        for key, p in procs.items():
            old = self._prev.get(key)
            if old is not None:
                d_cpu += max(0, p.cpu - old.cpu)
                if p.io_ok and old.io_ok:
                    d_io += max(0, p.io - old.io)
                elif not p.io_ok:
                    p.io, p.io_ok = old.io, old.io_ok  # carry forward an unreadable io file
            elif p.start >= self._prev_boot_ticks - 1:
                d_cpu += p.cpu  # born since the previous sample: all of it is new
                d_io += p.io
            # else: an older process we have just discovered: this sample is its baseline
        absorbed = self._absorbed(procs)
        d_cpu -= sum(o.cpu for o in absorbed)
        d_io -= sum(o.io for o in absorbed if o.io_ok)
        return max(0.0, d_cpu), max(0.0, d_io)

    def _absorbed(self, procs: dict[tuple[int, int], _Proc]) -> list[_Proc]:
        """Processes gone since the previous sample whose totals moved into a parent we still see.

        The kernel adds a reaped child's CPU and I/O to its parent's counters, so the parent's
        increment already holds all of the child's life: subtract what we had counted for the
        child before, and the tail it ran after our last look is counted exactly once.
        """
        present = {p.pid for p in procs.values()}
        gone = {k: o for k, o in self._prev.items() if k not in procs}
        absorbed: dict[tuple[int, int], _Proc] = {}
        changed = True
        while changed:
            changed = False
            for k, o in gone.items():
                if k not in absorbed and (
                    o.ppid in present or o.ppid in {a.pid for a in absorbed.values()}
                ):
                    absorbed[k] = o
                    changed = True
        return list(absorbed.values())

    def _net_delta(self, procs: dict[tuple[int, int], _Proc]) -> float:
        if self.tcp is None:
            return 0.0
        inodes: set[int] = set()
        baseline: set[int] = set()
        for key, p in procs.items():
            mine = socket_inodes(p.pid)
            inodes |= mine
            if key not in self._prev and p.start < self._prev_boot_ticks - 1:
                baseline |= mine  # sockets of a process we have just discovered
        if not inodes:
            self._prev_sock = {}
            return 0.0
        counters = self.tcp.read(inodes)
        total = 0
        for inode, value in counters.items():
            old = self._prev_sock.get(inode)
            if old is not None:
                total += max(0, value - old)
            elif inode not in baseline:
                total += value
        self._prev_sock = counters
        return float(total)

    def finish(self, cpu_seconds: float, io_bytes: float | None) -> None:
        """Record the root's final totals once it has been reaped (from ``wait4``'s rusage);
        the next :meth:`sample` accounts them.

        ``cpu_seconds`` = ru_utime + ru_stime, ``io_bytes`` = (ru_inblock + ru_oublock) × 512:
        the root plus every child it reaped, which is what its /proc counters held.
        """
        if self.root_finished:
            return
        self.root_finished = True
        root = next((p for p in self._prev.values() if p.pid == self.root_pid), None)
        if root is None:
            # Never sampled alive: count the whole run, as a process born after the last sample.
            root = _Proc(self.root_pid, int(self._prev_boot_ticks) + 1, 0, 0, 0, 0)
        final = _Proc(root.pid, root.start, root.ppid, root.sid, round(cpu_seconds * _TICK), 0)
        if io_bytes is not None:
            final.io, final.io_ok = int(io_bytes), True
        self._root_final = final

    def close(self) -> None:
        if self.tcp is not None:
            self.tcp.close()
