"""How much CPU does sampling a workload cost? Goal: <= 1 % of one core per workload at 1 Hz.

Runs a real process tree (a parent with ``--procs`` children, each holding ``--sockets`` open
loopback TCP connections that move a little data, plus some CPU and memory), then samples it
from a thread in this process, exactly as the engine's WorkloadHost does:

    baseline   a thread that wakes at the same rate and does nothing else
    sampler    the same thread calling WorkloadProcess.sample() (tree walk, /proc reads,
               socket look-ups, progress file) -- with the Ray-worker tag scan of /proc on
    dense      sample() called back to back: CPU per sample, so overhead at any rate follows

CPU is the sampling thread's own (CLOCK_THREAD_CPUTIME_ID: user + system, kernel /proc work
included). Overhead = (sampler thread CPU - baseline thread CPU) / wall time. The last line is JSON.

    .venv/bin/python bench/telemetry_overhead.py --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prae.config import WorkloadSpec  # noqa: E402
from prae.workloads.process import WorkloadProcess  # noqa: E402

CHILD = textwrap.dedent(
    """
    import os, socket, sys, time
    n_sockets = int(sys.argv[1])
    blob = bytearray(20 * 1024 * 1024)
    blob[::4096] = b"1" * (len(blob) // 4096)
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(n_sockets)
    pairs = []
    for _ in range(n_sockets):
        c = socket.create_connection(srv.getsockname()); s, _ = srv.accept()
        pairs.append((c, s))
    while True:
        t = time.process_time()
        while time.process_time() - t < 0.02:  # ~10 % of a core
            pass
        for c, s in pairs:
            c.sendall(b"x" * 1000); s.recv(4096)
        time.sleep(0.2)
    """
)


def workload_spec(procs: int, sockets: int, script: Path) -> WorkloadSpec:
    # A command that starts `procs` children and waits: a tree like a small Ray job's.
    code = (
        "import subprocess, sys, time; "
        f"ps = [subprocess.Popen([sys.executable, {str(script)!r}, '{sockets}']) for _ in range({procs})]; "
        "time.sleep(3600)"
    )
    return WorkloadSpec(name="bench", kind="command", entrypoint=f'{sys.executable} -c "{code}"')


def timed_loop(seconds: float, hz: float, work) -> tuple[float, list[float]]:
    """Run ``work`` every 1/hz s for ``seconds`` on a fresh thread: (thread CPU s, per-call wall s)."""
    out: dict[str, float] = {}
    lat: list[float] = []

    def loop() -> None:
        c0 = time.thread_time()
        t_end = time.monotonic() + seconds
        next_at = time.monotonic()
        while time.monotonic() < t_end:
            t = time.perf_counter()
            work()
            lat.append(time.perf_counter() - t)
            next_at += 1.0 / hz
            time.sleep(max(0.0, next_at - time.monotonic()))
        out["cpu"] = time.thread_time() - c0

    th = threading.Thread(target=loop)
    th.start()
    th.join()
    return out["cpu"], lat


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each timed phase")
    ap.add_argument("--hz", type=float, default=1.0)
    ap.add_argument("--procs", type=int, default=6, help="child processes in the tree")
    ap.add_argument("--sockets", type=int, default=8, help="TCP connections per child (x2 sockets)")
    ap.add_argument(
        "--dense", type=int, default=300, help="back-to-back samples for the per-sample cost"
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="prae-bench-") as tmp:
        script = Path(tmp) / "child.py"
        script.write_text(CHILD)
        wp = WorkloadProcess(
            workload_spec(args.procs, args.sockets, script), "live", Path(tmp) / "w"
        )
        wp.start()
        try:
            time.sleep(3.0)  # children up, sockets connected
            first = wp.sample()
            n_procs = len(wp.pids)
            base_cpu, _ = timed_loop(args.seconds, args.hz, lambda: None)
            seen = []
            samp_cpu, lat = timed_loop(args.seconds, args.hz, lambda: seen.append(wp.sample()))
            t = time.thread_time()
            for _ in range(args.dense):
                wp.sample()
            per_sample = (time.thread_time() - t) / args.dense
        finally:
            wp.stop(grace_s=2.0)
    overhead = (samp_cpu - base_cpu) / args.seconds
    result = {
        "hz": args.hz,
        "seconds": args.seconds,
        "tree_processes": n_procs,
        "tcp_sockets": 2 * args.sockets * args.procs,
        "baseline_thread_cpu_s": round(base_cpu, 5),
        "sampler_thread_cpu_s": round(samp_cpu, 5),
        "overhead_pct_of_core": round(100 * overhead, 4),
        "per_sample_cpu_ms": round(1000 * per_sample, 4),
        "overhead_pct_at_1hz_from_dense": round(100 * per_sample, 4),
        "sample_wall_ms_p50": round(1000 * statistics.median(lat), 3),
        "sample_wall_ms_max": round(1000 * max(lat), 3),
        "workload_cpu_cores_mean": round(statistics.fmean(x.cpu for x in seen[1:]), 3),
        "workload_net_bytes_s_mean": round(statistics.fmean(x.net for x in seen[1:]), 1),
        "first_sample_mem_bytes": first.mem,
        "goal_pct": 1.0,
        "machine_cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
