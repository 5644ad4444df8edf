"""What a running workload sees: its role, its data, and a way to report progress."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from prae.config import WorkloadSpec
from prae.telemetry.process_tree import TAG_ENV
from prae.workloads.progress import ProgressWriter

T = TypeVar("T")
Role = Literal["live", "shadow"]


@dataclass
class WorkloadContext:
    """Handed to every workload function (kind ``python``) and every built-in.

    ``work_dir`` is this role's own writable directory; ``data_dir`` (inside it) is where the
    role's generated or sampled data lives. A shadow's directories are never the live ones,
    and a shadow cannot write outside its own ``work_dir`` (see :mod:`prae.workloads.sandbox`).
    ``inputs`` is the data source: the files of ``params["inputs"]`` for the live run, a
    deterministic ``fraction`` of them for a sample-mode shadow (read-only for the shadow).
    """

    name: str
    kind: str
    role: Role
    shadow_mode: str  # the workload's shadow mode (for the live run: what it feeds, e.g. mirror)
    fraction: float  # 1.0 live; the shadow's share of the data
    params: Mapping[str, Any]
    work_dir: Path
    seed: int = 0
    tag: str = ""
    inputs: tuple[Path, ...] = ()
    progress: ProgressWriter | None = None
    spec: WorkloadSpec | None = None  # the whole definition (profile, shadow settings)
    stop_requested: bool = field(default=False, repr=False)

    @property
    def is_shadow(self) -> bool:
        return self.role == "shadow"

    @property
    def data_dir(self) -> Path:
        path = self.work_dir / "data"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def report_progress(self, fraction: float, phase: str | None = None) -> None:
        """Tell the sampler how far through its data this run is (0..1) and, optionally, in what phase."""
        if self.progress is not None:
            self.progress.report(fraction, phase)

    def select(self, items: Sequence[T]) -> list[T]:
        """The live run's items all; a shadow's deterministic ``fraction`` of them (at least one).

        Chosen by a hash of each item, so the same items are picked on every run and the
        sample is spread over the whole sequence rather than being its head.
        """
        items = list(items)
        if not self.is_shadow or not items:
            return items
        want = max(1, round(len(items) * self.fraction))
        ranked = sorted(
            range(len(items)),
            key=lambda i: hashlib.blake2b(f"{self.seed}:{items[i]}".encode()).digest(),
        )
        return [items[i] for i in sorted(ranked[:want])]

    def ray_init(self, **kwargs: Any) -> Any:
        """``ray.init`` for a workload that runs Ray tasks or actors: connects to the running
        cluster (``RAY_ADDRESS``, else ``auto``) and tags the job's workers with this workload's
        tag so the sampler counts their processes. Extra ``kwargs`` go to ``ray.init``."""
        import ray

        kwargs.setdefault("address", os.environ.get("RAY_ADDRESS", "auto"))
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("log_to_driver", False)
        # The launcher already put the tag in RAY_JOB_CONFIG_JSON_ENV_VAR, which ray.init
        # merges into the job's runtime_env; nothing else to do here.
        return ray.init(**kwargs)


def tag_ray_job_env(env: dict[str, str], tag: str) -> None:
    """Make every Ray job the workload starts carry ``PRAE_WORKLOAD_TAG=<tag>`` on its workers.

    ``ray.init`` reads ``RAY_JOB_CONFIG_JSON_ENV_VAR`` (what ``ray job submit`` uses) and merges
    its runtime_env into the driver's, env_vars key by key; workers then start with the tag in
    their environment, whatever runtime_env the workload passes itself.
    """
    key = "RAY_JOB_CONFIG_JSON_ENV_VAR"
    config: dict[str, Any] = {}
    if env.get(key):
        try:
            config = json.loads(env[key])
        except ValueError:
            config = {}
    runtime_env = config.setdefault("runtime_env", {}) or {}
    config["runtime_env"] = runtime_env
    env_vars = runtime_env.setdefault("env_vars", {}) or {}
    runtime_env["env_vars"] = env_vars
    env_vars[TAG_ENV] = tag
    env[key] = json.dumps(config)


def install_stop_handler(ctx: WorkloadContext) -> None:
    """SIGTERM sets ``ctx.stop_requested`` and ends the run with SystemExit(143), so ``finally``
    blocks (children, servers, temporary files) run before the process exits."""

    def handler(signum: int, frame: Any) -> None:
        ctx.stop_requested = True
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
