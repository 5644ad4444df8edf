"""Built-in ``service``: an HTTP service on loopback under a load that follows a real pattern.

The service (this process) answers ``GET /item?key=K``: ``work_ms`` of CPU per request (hashing),
a response of ``response_kb``, an LRU cache of responses that grows towards ``cache_mb`` as new
keys arrive (memory), and on a cache miss the response is appended to a store file (disk). The
load generator (a child process, part of the workload's tree) keeps ``connections`` keep-alive
connections and sends requests open-loop at a rate that follows a trace's CPU curve
(``pattern``, ``start``, ``steps``, one row per ``step_s``) scaled to ``rps_max``; keys are Zipf
distributed over a key space that widens with time, so the cache keeps growing.

Shadow modes
    mirror    the live service copies each request with probability ``fraction`` to the shadow
              (a bounded queue, a background thread, 2 s timeouts: a slow or dead shadow only
              loses copies, the live responses never wait). The shadow runs the service alone,
              publishes ``host:port`` in ``.prae/endpoint`` and takes its progress from the
              ``X-Prae-Progress`` header of the copies; it ends on the live run's last copy or
              after ``idle_exit_s`` without any. The live run finds the shadow through
              ``PRAE_MIRROR_TO=host:port`` or the file named by ``PRAE_MIRROR_FILE``.
              Mirroring runs alongside the live run: it does not lead it.
    sample, simulate   the whole service and its load in ``fraction`` of the time (steps of
              ``step_s × fraction``, at least 50 ms), at the same rates: it leads the live run.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from prae.workloads.context import WorkloadContext

STORE_WRAP = 128 * 1024 * 1024
MIRROR_QUEUE = 256
MIRROR_TIMEOUT_S = 2.0  # only the mirror thread waits on it, never a live response


class _State:
    def __init__(self, ctx: WorkloadContext, params: Any, planned: int) -> None:
        self.ctx = ctx
        self.work_s = float(params["work_ms"]) / 1000.0
        self.response = os.urandom(int(float(params["response_kb"]) * 1024))
        self.cache_max = int(float(params["cache_mb"]) * 1024 * 1024)
        self.cache: OrderedDict[str, bytes] = OrderedDict()
        self.cache_bytes = 0
        self.lock = threading.Lock()
        self.store = os.open(
            ctx.work_dir / "tmp" / "store.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644
        )
        self.store_pos = 0
        self.requests = 0
        self.misses = 0
        self.planned = planned
        self.last_request = time.monotonic()
        self.done = threading.Event()
        self.progress_from_header = ctx.is_shadow and ctx.shadow_mode == "mirror"
        self.mirror: _Mirror | None = None

    def handle(self, key: str) -> bytes:
        t0 = time.thread_time()
        h = hashlib.sha256(key.encode())
        while time.thread_time() - t0 < self.work_s:  # the request's own CPU time
            h.update(self.response[:4096])
        with self.lock:
            self.requests += 1
            body = self.cache.get(key)
            if body is not None:
                self.cache.move_to_end(key)
                return body
            self.misses += 1
            body = h.digest() + self.response[32:]
            self.cache[key] = body
            self.cache_bytes += len(body)
            while self.cache_bytes > self.cache_max and self.cache:
                _, old = self.cache.popitem(last=False)
                self.cache_bytes -= len(old)
            n = os.pwrite(self.store, body, self.store_pos)
            self.store_pos = (self.store_pos + n) % STORE_WRAP
        return body


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: connections live long enough to be counted

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            url = urlsplit(self.path)
            if url.path == "/__done":
                state.done.set()
                self._reply(b"bye")
                return
            key = parse_qs(url.query).get("key", ["0"])[0]
            body = state.handle(key)
            state.last_request = time.monotonic()
            if state.progress_from_header:
                with contextlib.suppress(TypeError, ValueError):
                    state.ctx.report_progress(float(self.headers.get("X-Prae-Progress")), "serve")
            elif state.mirror is not None:
                state.mirror.offer(self.path, _progress(state))
            self._reply(body)

        def _reply(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    return Handler


def _progress(state: _State) -> float:
    """Requests answered / requests the load plan holds: how far through its 'data' it is."""
    return min(1.0, state.requests / state.planned) if state.planned > 0 else 0.0


class _Mirror:
    """Copies a fraction of requests to the shadow without ever making the live service wait."""

    def __init__(self, fraction: float, target: str | None, target_file: str | None) -> None:
        self.fraction = fraction
        self.target = target
        self.target_file = target_file
        self.q: queue.Queue[tuple[str, float] | None] = queue.Queue(MIRROR_QUEUE)
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self.last_error: str | None = None
        self.rng = random.Random(7)
        self.thread = threading.Thread(target=self._run, name="prae-mirror", daemon=True)
        self.thread.start()

    def offer(self, path: str, progress: float) -> None:
        if self.rng.random() >= self.fraction:
            return
        try:
            self.q.put_nowait((path, progress))
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self.q.put(("/__done", 1.0), timeout=0.5)
        with contextlib.suppress(queue.Full):
            self.q.put(None, timeout=0.5)
        self.thread.join(timeout=2.0)

    def _resolve(self) -> str | None:
        if self.target:
            return self.target
        if self.target_file:
            with contextlib.suppress(OSError):
                text = open(self.target_file).read().strip()  # noqa: SIM115 - tiny file
                return text or None
        return None

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while True:
            item = self.q.get()
            if item is None:
                break
            target = self._resolve()
            if target is None:
                self.dropped += 1
                continue
            path, progress = item
            try:
                if conn is None:
                    host, _, port = target.rpartition(":")
                    conn = http.client.HTTPConnection(host, int(port), timeout=MIRROR_TIMEOUT_S)
                conn.request("GET", path, headers={"X-Prae-Progress": f"{progress:.6f}"})
                conn.getresponse().read()
                self.sent += path != "/__done"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.failed += 1
                self.last_error = repr(exc)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def rate_curve(params: Any) -> np.ndarray:
    """Requests/s per step: the pattern's CPU column scaled so its peak is ``rps_max``."""
    from prae.workloads.tracesrc import load_window, scale_to_peaks

    window = load_window(str(params["pattern"]), int(params["start"]), int(params["steps"]))
    rps = scale_to_peaks(window, (float(params["rps_max"]), 0.0, 0.0, 0.0))[:, 0]
    return np.maximum(rps, 1.0)


def run(ctx: WorkloadContext) -> dict[str, Any]:
    p = ctx.params
    mirror_shadow = ctx.is_shadow and ctx.shadow_mode == "mirror"
    step_s = float(p["step_s"])
    rates = None if mirror_shadow else rate_curve(p)
    if ctx.is_shadow and not mirror_shadow:
        # Time only, at full rates: a service's CPU and memory are not proportional to its
        # load at low rates (threads, cache, the load generator), so a scaled-down load has
        # another shape. Measured: 1/8 of the rates at 8x less compression dropped the
        # shadow-live correlation of cpu from 0.76 to 0.27 (bench/shadow_ablation.py).
        step_s = max(0.05, step_s * ctx.fraction)
    planned = 0 if rates is None else sum(int(round(r * step_s)) for r in rates)
    state = _State(ctx, p, planned)
    if ctx.role == "live" and ctx.shadow_mode == "mirror":
        fraction = ctx.spec.shadow.fraction if ctx.spec is not None else 0.05
        state.mirror = _Mirror(
            fraction, os.environ.get("PRAE_MIRROR_TO"), os.environ.get("PRAE_MIRROR_FILE")
        )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    endpoint = f"{host}:{port}"
    tmp = ctx.work_dir / ".prae" / "endpoint.tmp"
    tmp.write_text(endpoint)
    os.replace(tmp, ctx.work_dir / ".prae" / "endpoint")
    serve = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
    )
    serve.start()
    loadgen: subprocess.Popen[bytes] | None = None
    try:
        if mirror_shadow:
            ctx.report_progress(0.0, "serve")
            idle = float(p["idle_exit_s"])
            while not state.done.is_set() and time.monotonic() - state.last_request < idle:
                state.done.wait(0.2)
        else:
            plan = {
                "endpoint": endpoint,
                "rates": rates.tolist(),
                "step_s": step_s,
                "keys": _keys(planned, ctx.seed),
                "connections": int(p["connections"]),
            }
            # The plan on stdin: thousands of keys may not fit one argv string (128 KiB).
            loadgen = subprocess.Popen([sys.executable, "-c", _LOADGEN], stdin=subprocess.PIPE)
            assert loadgen.stdin is not None
            loadgen.stdin.write(json.dumps(plan).encode())
            loadgen.stdin.close()
            while loadgen.poll() is None:
                ctx.report_progress(_progress(state), "serve")
                time.sleep(0.1)
    finally:
        if loadgen is not None and loadgen.poll() is None:
            loadgen.terminate()
            loadgen.wait()
        if state.mirror is not None:
            state.mirror.close()
        server.shutdown()
        server.server_close()
        os.close(state.store)
    out: dict[str, Any] = {
        "requests": state.requests,
        "misses": state.misses,
        "cache_bytes": state.cache_bytes,
    }
    if state.mirror is not None:
        out["mirror"] = {
            "sent": state.mirror.sent,
            "dropped": state.mirror.dropped,
            "failed": state.mirror.failed,
            "last_error": state.mirror.last_error,
        }
    if loadgen is not None:
        out["loadgen_exit"] = loadgen.returncode
    return out


def _keys(n: int, seed: int) -> list[int]:
    """The key of each of ``n`` requests in order: Zipf over a key space that widens with time."""
    rng = np.random.default_rng(seed)
    space = np.linspace(1000, 50000, n).astype(np.int64)
    return (rng.zipf(1.2, n) % space).tolist() if n else []


# The load generator runs as a child process (own interpreter: its CPU does not steal the
# server's GIL). It imports only the standard library (numpy alone would be ~0.15 CPU-s, a
# tenth of a shadow's budget): the keys come with the plan. Open loop: request k of a
# connection is due at its scheduled time whether or not earlier ones were slow; a late one
# is sent at once.
_LOADGEN = r"""
import http.client, json, sys, threading, time
plan = json.loads(sys.stdin.read())
host, _, port = plan["endpoint"].rpartition(":")
rates, step_s, conns, keys = plan["rates"], plan["step_s"], plan["connections"], plan["keys"]
# Due times of all requests, then dealt round-robin to the connections.
due = []
for i, r in enumerate(rates):
    n = int(round(r * step_s))
    due.extend(i * step_s + (j + 0.5) * step_s / max(1, n) for j in range(n))
t0 = time.monotonic()
end = len(rates) * step_s
def worker(c):
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    for k in range(c, len(due), conns):
        delay = t0 + due[k] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            conn.request("GET", f"/item?key={keys[k]}")
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.close()
threads = [threading.Thread(target=worker, args=(c,)) for c in range(conns)]
for t in threads: t.start()
for t in threads: t.join()
rest = t0 + end - time.monotonic()
if rest > 0:
    time.sleep(rest)
"""
