"""Ray's fake multi-node autoscaling cluster, started and stopped by us, with slow nodes.

Why not ``ray.cluster_utils.AutoscalingCluster``: from a pip install its constructor reads
an ``example.yaml`` the wheel does not ship, and its ``start()``/``shutdown()`` run
``ray stop --force``, which kills every Ray process on the machine (other people's too).
Here the base config is written out in full, the head runs from its own short temp dir on
free ports outside 10002–19999, and :meth:`FakeAutoscalingCluster.stop` stops only the
processes that name that temp dir (every daemon of the head *and* of each fake node does:
fake nodes inherit the head's temp dir) plus their descendants.

Node start-up delay
-------------------
Fake nodes are raylets on this machine and join in ~1–2 s; cloud VMs take minutes. The
delay is modelled in the provider path: :class:`DelayedFakeProvider` (loaded by the
autoscaler as an ``external`` provider) sleeps ``startup_delay_s`` inside
``create_node`` before it starts the raylet. The autoscaler runs launches on its
``NodeLauncher`` threads and counts them as *pending launches* meanwhile, exactly as it
counts a cloud VM that is booting: it does not launch twice for the same demand, and a
task or placement group that needs the node waits the full delay. Every launch is
appended to ``<temp_dir>/launches.jsonl`` (requested / up timestamps) for the reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prae.testing.local_cluster import LocalHead, free_port

PROVIDER_PATH = "prae.testing.fake_cluster.DelayedFakeProvider"
LAUNCH_LOG = "launches.jsonl"


@dataclass(frozen=True)
class FakeNodeType:
    """One worker node type of the fake cluster."""

    name: str = "cpu2"
    cpus: int = 2
    max_workers: int = 4
    min_workers: int = 0
    resources: Mapping[str, float] = field(default_factory=dict)  # custom resources ('memory' not allowed)
    object_store_bytes: int = 80 * 1024**2


def cluster_config(
    node_types: Sequence[FakeNodeType],
    head_cpus: int,
    gcs_address: str,
    startup_delay_s: float,
    idle_timeout_s: float,
    launch_log: str,
) -> dict[str, Any]:
    """The whole autoscaling config: what the wheel's missing ``example.yaml`` would have held."""
    types: dict[str, Any] = {
        "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
    }
    for nt in node_types:
        if "memory" in nt.resources:
            raise ValueError("a fake node type may not declare 'memory' as a custom resource (the launch fails)")
        types[nt.name] = {
            "resources": {"CPU": nt.cpus, "object_store_memory": nt.object_store_bytes, **nt.resources},
            "node_config": {},
            "min_workers": nt.min_workers,
            "max_workers": nt.max_workers,
        }
    return {
        "cluster_name": "prae-fake",
        "max_workers": sum(nt.max_workers for nt in node_types),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "provider": {
            "type": "external",
            "module": PROVIDER_PATH,
            "gcs_address": gcs_address,
            "launch_multiple": True,  # the base class otherwise creates one node per call
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "startup_delay_s": startup_delay_s,
            "launch_log": launch_log,
        },
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _provider_base() -> type:
    from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

    return FakeMultiNodeProvider


class DelayedFakeProvider(_provider_base()):  # type: ignore[misc]
    """The fake multi-node provider with a boot delay before each launched node joins.

    Runs inside the autoscaler (monitor) process, never in tests directly.
    """

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        self.startup_delay_s = float(provider_config.get("startup_delay_s", 0.0))
        self.launch_log = provider_config.get("launch_log")

    def create_node_with_resources_and_labels(
        self, node_config: Any, tags: Any, count: int, resources: Any, labels: Any
    ) -> None:
        requested = time.time()
        time.sleep(self.startup_delay_s)  # the VM boots: the autoscaler counts it as pending
        super().create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
        if self.launch_log:
            with open(self.launch_log, "a") as f:
                f.write(json.dumps({"count": count, "requested": requested, "up": time.time(),
                                    "resources": dict(resources)}) + "\n")


class FakeAutoscalingCluster:
    """An autoscaling cluster of fake nodes on this machine. Use as a context manager::

        with FakeAutoscalingCluster(startup_delay_s=10) as cluster:
            ray.init(address=cluster.address)
            ...
            ray.shutdown()
    """

    def __init__(
        self,
        node_types: Sequence[FakeNodeType] = (FakeNodeType(),),
        head_cpus: int = 0,
        startup_delay_s: float = 10.0,
        idle_timeout_s: float = 6.0,
        update_interval_s: float = 1.0,
        keep_temp_dir: bool = False,
    ) -> None:
        self.node_types = tuple(node_types)
        self.head_cpus = head_cpus
        self.startup_delay_s = startup_delay_s
        self.idle_timeout_s = idle_timeout_s
        self.update_interval_s = update_interval_s
        self.keep_temp_dir = keep_temp_dir  # True: keep the logs (session_*/logs/monitor.log) after stop
        self.head: LocalHead | None = None
        self.node_ip = ""

    @property
    def address(self) -> str:
        if self.head is None:
            raise RuntimeError("the cluster is not started")
        return f"{self.node_ip}:{self.head.gcs_port}"

    @property
    def temp_dir(self) -> Path:
        if self.head is None:
            raise RuntimeError("the cluster is not started")
        return self.head.temp_dir

    def launches(self) -> list[dict[str, Any]]:
        """Node launches so far: requested/up timestamps (seconds), count, resources."""
        path = self.temp_dir / LAUNCH_LOG
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def start(self, timeout_s: float = 90.0) -> FakeAutoscalingCluster:
        from ray._private.services import get_node_ip_address

        self.node_ip = get_node_ip_address()
        # Unix socket paths must stay short (< 108 bytes): a short temp dir under /tmp.
        temp_dir = Path(tempfile.mkdtemp(prefix="praefc", dir="/tmp"))
        self.head = LocalHead(temp_dir, free_port(), free_port())
        cfg = cluster_config(
            self.node_types,
            self.head_cpus,
            self.address,
            self.startup_delay_s,
            self.idle_timeout_s,
            str(temp_dir / LAUNCH_LOG),
        )
        cfg_path = temp_dir / "autoscaling.json"
        cfg_path.write_text(json.dumps(cfg))
        env = {
            **os.environ,
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": f"{self.update_interval_s:g}",
            "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
            "RAY_USAGE_STATS_ENABLED": "0",
            # The autoscaler's own metrics port is fixed (44217) unless told: another
            # cluster on this machine may hold it.
            "AUTOSCALER_METRIC_PORT": str(free_port()),
        }
        env.pop("RAY_ADDRESS", None)
        # The monitor imports DelayedFakeProvider: make sure it finds this package.
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        self.head.env = env
        ray_bin = str(Path(sys.executable).with_name("ray"))
        cmd = [
            ray_bin if os.path.exists(ray_bin) else "ray", "start", "--head",
            f"--port={self.head.gcs_port}",
            f"--autoscaling-config={cfg_path}",
            f"--num-cpus={self.head_cpus}",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
        ]
        try:
            subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=timeout_s)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            self.stop()
            out = getattr(exc, "stdout", "") or ""
            err = getattr(exc, "stderr", "") or ""
            raise RuntimeError(f"ray start (fake autoscaling cluster) failed:\n{out}\n{err}") from exc
        return self

    def monitor_log(self) -> str:
        """The autoscaler's log (for diagnosing a test failure)."""
        logs = sorted(self.temp_dir.glob("session_*/logs/monitor.log"))
        return logs[-1].read_text(errors="replace") if logs else ""

    def stop(self) -> int:
        """Stop every process of this cluster and nothing else; returns how many."""
        if self.head is None:
            return 0
        n = self.head.stop()
        with contextlib.suppress(Exception):
            from ray._private.services import find_gcs_addresses

            find_gcs_addresses.cache_clear()
        if not self.keep_temp_dir and not self.head.processes():
            shutil.rmtree(self.head.temp_dir, ignore_errors=True)
        return n

    def __enter__(self) -> FakeAutoscalingCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
