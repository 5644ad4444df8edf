"""Start a real ``ray start --head`` for a test, and stop exactly the processes it started.

``ray stop`` (and ``AutoscalingCluster.shutdown``) kill every Ray process on the machine,
including clusters that are not ours. Instead, the head gets its own short ``--temp-dir``;
every daemon it starts names that directory on its command line, so we find them (and their
worker children) by it and stop only them.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def free_port(low: int = 20000, high: int = 40000) -> int:
    """A free TCP port outside Ray's default worker range 10002–19999."""
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


@dataclass
class LocalHead:
    temp_dir: Path
    gcs_port: int
    dashboard_port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def processes(self) -> list[psutil.Process]:
        """Our daemons (found by temp dir) and all their descendants."""
        marker = str(self.temp_dir)
        roots = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(marker in part for part in (p.info["cmdline"] or [])):
                    roots.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        found = {p.pid: p for p in roots}
        for p in roots:
            try:
                for c in p.children(recursive=True):
                    found.setdefault(c.pid, c)
            except psutil.NoSuchProcess:
                continue
        return list(found.values())

    def stop(self, grace_s: float = 10.0) -> int:
        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        return len(procs)


def start_head(num_cpus: int = 8, extra_env: Mapping[str, str] | None = None, timeout_s: float = 60) -> LocalHead:
    # Unix socket paths must stay short (< 108 bytes): a short temp dir under /tmp.
    temp_dir = Path(tempfile.mkdtemp(prefix="prae", dir="/tmp"))
    head = LocalHead(temp_dir, free_port(), free_port())
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), **(extra_env or {})}
    env.pop("RAY_ADDRESS", None)
    # This interpreter's bin first: `ray` and the job's `prae` resolve to this environment.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    head.env = env
    cmd = [
        f"{bin_dir}/ray", "start", "--head",
        f"--port={head.gcs_port}",
        f"--dashboard-port={head.dashboard_port}",
        "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--num-cpus={num_cpus}",
        f"--temp-dir={temp_dir}",
        "--object-store-memory=300000000",
        "--disable-usage-stats",
    ]
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.CalledProcessError as exc:
        head.stop()
        raise RuntimeError(f"ray start failed:\n{exc.stdout}\n{exc.stderr}") from exc
    deadline = time.time() + timeout_s
    import urllib.request

    while time.time() < deadline:  # the job API answers only once the dashboard is up
        try:
            with urllib.request.urlopen(f"{head.dashboard_url}/api/version", timeout=2):
                return head
        except OSError:
            time.sleep(0.5)
    head.stop()
    raise RuntimeError(f"dashboard at {head.dashboard_url} did not come up in {timeout_s:g}s")
