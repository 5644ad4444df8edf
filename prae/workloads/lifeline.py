"""A workload's process group dies with the process that started it.

A workload runs in its own session (``WorkloadProcess`` starts it with ``setsid``), so when
its host dies -- a killed or crashed Ray actor, its owner's death, a driver stopped with
``ray job stop``, an OOM kill -- nothing signals it: the live run would go on burning its CPU
unwatched, with no one left to stop it. (Shadows forked from a fork server are covered by the
server, which kills a child whose client's connection closes.)

The lifeline is a pipe. Its write end stays in the host; its read end is the stdin of a tiny
watcher (``sh`` + ``head``, ~1 MB, in a session of its own so it is not sampled as part of the
workload). The kernel closes the write end when the host dies however it dies, the watcher
reads end-of-file, and it kills the workload's process group. On an orderly stop the host
writes one byte first, and the watcher exits without killing anything.

Limits: a process of the workload that left the group (``setsid``/``setpgid``) is not killed;
if the host dies after the workload ended and before it was stopped, the group's id may in
principle have been reused by then (pids wrap).
"""

from __future__ import annotations

import contextlib
import os
import subprocess

# $1 is the process group; one byte means "stopped in order", end-of-file means "host gone".
_WATCH = 'b=$(head -c1); [ -n "$b" ] || kill -KILL "-$1"'


class Lifeline:
    def __init__(self, pgid: int) -> None:
        """Watch ``pgid`` (a session leader's pid) from now on."""
        read_end, self._write_end = os.pipe()  # both close-on-exec: no other child holds them
        try:
            self.watcher = subprocess.Popen(
                ["/bin/sh", "-c", _WATCH, "prae-lifeline", str(pgid)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # not the workload's session: not sampled, not signalled
                close_fds=True,
            )
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)

    def release(self, timeout_s: float = 5.0) -> None:
        """The workload was stopped in order: let the watcher go without killing. Idempotent."""
        if self._write_end < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._write_end, b"q")
        os.close(self._write_end)
        self._write_end = -1
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.watcher.wait(timeout_s)
