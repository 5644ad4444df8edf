"""Play a resource curve on this machine: burn CPU, hold memory, write to disk, send over loopback.

Used by ``replay`` (a real trace's curve) and by the ``simulate`` shadow mode (a profile's
phases). Per step of ``step_s`` seconds the player:

- cpu   sets the duty cycle of ``ceil(max cpu)`` burner processes (busy-wait 20 ms slices), minus
        what the player itself used in the previous step, so the tree as a whole follows the curve;
- mem   grows or shrinks a list of 8 MiB blocks that are written to (so they are resident);
- disk  appends ``disk × step_s`` bytes to a scratch file (wrapping at 64 MiB) and fdatasyncs it
        each step, so every byte is new dirty page cache and counts as block-layer writes;
- net   sends ``net × step_s / 2`` bytes over a loopback TCP connection to a sink thread in the
        same process: the sampler counts both ends (sent + received), i.e. ``net × step_s``.

Traces and trace sources: see :mod:`prae.workloads.tracesrc`.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prae.workloads.context import WorkloadContext

BLOCK = 8 * 1024 * 1024
SAMPLE_INTERVAL_ENV = "PRAE_SAMPLE_INTERVAL_S"  # how often the role's telemetry is sampled
SCRATCH_WRAP = 64 * 1024 * 1024
SLICES_PER_STEP = 10

_BURNER = """
import mmap, os, struct, sys, time
path, idx = sys.argv[1], int(sys.argv[2])
f = open(path, "r+b")
m = mmap.mmap(f.fileno(), 0)
parent = os.getppid()
slice_s = 0.02
while True:
    duty = struct.unpack_from("d", m, 8 * idx)[0]
    if duty < 0 or os.getppid() != parent:
        break
    t0 = time.perf_counter()
    busy = min(1.0, duty) * slice_s
    while time.perf_counter() - t0 < busy:
        pass
    rest = slice_s - (time.perf_counter() - t0)
    if rest > 0:
        time.sleep(rest)
"""


@dataclass(frozen=True)
class Curve:
    """Per-step targets, each shape (N,): cpu cores, mem bytes, disk bytes/s, net bytes/s."""

    cpu: np.ndarray
    mem: np.ndarray
    disk: np.ndarray
    net: np.ndarray
    step_s: float
    phases: Sequence[str] = ()

    def __post_init__(self) -> None:
        n = len(self.cpu)
        if not all(len(a) == n for a in (self.mem, self.disk, self.net)) or n == 0:
            raise ValueError("cpu, mem, disk and net must be non-empty and of one length")
        if self.phases and len(self.phases) != n:
            raise ValueError("phases must name every step")

    def __len__(self) -> int:
        return len(self.cpu)

    def shadow(self, fraction: float, min_step_s: float) -> Curve:
        """The shadow's curve: ``fraction`` of the cost, ahead of the live run, resolved.

        Time is compressed by ``fraction`` only down to ``min_step_s`` (what the shadow's
        sampling can resolve: a step shorter than a sample is averaged away); the rest of
        the saving comes from a smaller amplitude. Cost (resource x seconds) is ``fraction``
        of the live curve's either way; shapes survive scaling because the predictor
        normalises each series itself.
        """
        step, scale = shadow_timeline(self.step_s, fraction, min_step_s)
        return Curve(self.cpu * scale, self.mem * scale, self.disk * scale, self.net * scale, step, self.phases)


def shadow_timeline(step_s: float, fraction: float, min_step_s: float) -> tuple[float, float]:
    """(shadow step seconds, amplitude factor) for a timeline workload's shadow.

    E.g. 1-s live steps, fraction 0.05, samples every 0.2 s (min step 0.4 s): 0.4-s steps at
    0.125 of the amplitude -- not 0.05-s steps at full amplitude, four of which would fall
    into one sample. Never slower than the live run.
    """
    step = max(step_s * fraction, min(min_step_s, step_s))
    return step, fraction * step_s / step


def shadow_min_step_s() -> float:
    """Two of the shadow's own sampling intervals (``PRAE_SAMPLE_INTERVAL_S``, set by whoever
    samples it; 0.1 s if unset): every step is seen whole by at least one sample."""
    try:
        interval = float(os.environ.get(SAMPLE_INTERVAL_ENV, "0.1"))
    except ValueError:
        interval = 0.1
    return 2 * max(0.01, interval)


class _Sink:
    """A loopback TCP connection whose far end discards what it receives."""

    def __init__(self) -> None:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        self.tx = socket.create_connection(srv.getsockname())
        self.rx, _ = srv.accept()
        srv.close()
        self.thread = threading.Thread(target=self._drain, name="prae-sink", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        try:
            while self.rx.recv(1 << 20):
                pass
        except OSError:
            pass

    def close(self) -> None:
        for s in (self.tx, self.rx):
            with contextlib.suppress(OSError):
                s.close()


class CurvePlayer:
    def __init__(self, ctx: WorkloadContext, max_cpu: float) -> None:
        self.ctx = ctx
        tmp = ctx.work_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        self.n_burners = max(1, math.ceil(max_cpu - 1e-9)) if max_cpu > 0 else 0
        self.ctl_path = tmp / f"burn-{os.getpid()}.ctl"
        self.ctl_path.write_bytes(b"\0" * 8 * max(1, self.n_burners))
        self._ctl_file = open(self.ctl_path, "r+b")  # noqa: SIM115 - closed in close()
        self.ctl = mmap.mmap(self._ctl_file.fileno(), 0)
        self.burners = [
            subprocess.Popen([sys.executable, "-c", _BURNER, str(self.ctl_path), str(i)])
            for i in range(self.n_burners)
        ]
        self.blocks: list[bytearray] = []
        self.scratch_path = tmp / f"scratch-{os.getpid()}.bin"
        self.scratch = os.open(self.scratch_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.scratch_pos = 0
        self.payload = os.urandom(1 << 20)
        self.sink = _Sink()

    def set_cpu(self, cores: float) -> None:
        for i in range(self.n_burners):
            struct.pack_into("d", self.ctl, 8 * i, min(1.0, max(0.0, cores - i)))

    def set_mem(self, target: float) -> None:
        want = max(0, int(target // BLOCK))
        while len(self.blocks) > want:
            self.blocks.pop()
        while len(self.blocks) < want:
            block = bytearray(BLOCK)
            block[::4096] = b"\1" * (BLOCK // 4096)  # touch every page: resident, not just reserved
            self.blocks.append(block)

    def write(self, nbytes: int) -> None:
        while nbytes > 0:
            n = min(nbytes, len(self.payload), SCRATCH_WRAP - self.scratch_pos)
            os.pwrite(self.scratch, self.payload[:n], self.scratch_pos)
            self.scratch_pos = (self.scratch_pos + n) % SCRATCH_WRAP
            nbytes -= n

    def send(self, nbytes: int) -> None:
        while nbytes > 0:
            n = min(nbytes, len(self.payload))
            self.sink.tx.sendall(self.payload[:n])
            nbytes -= n

    def play(
        self, curve: Curve, progress_from: float = 0.0, progress_to: float = 1.0
    ) -> dict[str, Any]:
        n = len(curve)
        slice_s = curve.step_s / SLICES_PER_STEP
        own_cpu = 0.0  # cores the player itself used in the previous step
        started = time.perf_counter()
        next_at = started
        for i in range(n):
            step_cpu0 = time.process_time()
            phase = curve.phases[i] if curve.phases else "replay"
            self.ctx.report_progress(progress_from + (progress_to - progress_from) * i / n, phase)
            self.set_cpu(float(curve.cpu[i]) - own_cpu)
            self.set_mem(float(curve.mem[i]))
            disk_slice = int(curve.disk[i] * curve.step_s / SLICES_PER_STEP)
            net_slice = int(curve.net[i] * curve.step_s / 2 / SLICES_PER_STEP)
            for _ in range(SLICES_PER_STEP):
                if disk_slice:
                    self.write(disk_slice)
                if net_slice:
                    self.send(net_slice)
                next_at += slice_s
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if disk_slice:
                os.fdatasync(self.scratch)
            own_cpu = (time.process_time() - step_cpu0) / curve.step_s
            self.ctx.report_progress(
                progress_from + (progress_to - progress_from) * (i + 1) / n, phase
            )
        return {"steps": n, "step_s": curve.step_s, "seconds": time.perf_counter() - started}

    def close(self) -> None:
        for i in range(self.n_burners):
            struct.pack_into("d", self.ctl, 8 * i, -1.0)
        for p in self.burners:
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.blocks.clear()
        self.sink.close()
        self.ctl.close()
        self._ctl_file.close()
        os.close(self.scratch)
        for path in (self.scratch_path, self.ctl_path):
            Path(path).unlink(missing_ok=True)


def play_curve(ctx: WorkloadContext, curve: Curve) -> dict[str, Any]:
    player = CurvePlayer(ctx, float(np.nanmax(curve.cpu)) if len(curve) else 0.0)
    try:
        return player.play(curve)
    finally:
        player.close()
