"""Which code each workload kind and shadow mode runs, and the checks made before it starts.

Kinds
    python   ``entrypoint: module:function``; the function gets a
             :class:`~prae.workloads.context.WorkloadContext` and may return a JSON-able dict.
    command  ``entrypoint: "prog --flag"``; run without a shell, told its role through
             ``PRAE_*`` environment variables (see :mod:`prae.workloads.launch`).
    etl, train, replay, service, tasks   the built-ins (modules of this package); ``tasks``
             is Ray-native: its tasks run in the workload's reservation.

Shadow modes (what the role ``shadow`` runs)
    sample    the same code on ``fraction`` of the data; for replay and service, whose data is a
              timeline, the timeline compressed into ``fraction`` of its duration.
    mirror    service only: the live service copies ``fraction`` of its requests to the shadow.
    simulate  replay and service: the same as sample (their workload *is* a simulated
              environment); other kinds: the profile's phases replayed as a resource curve,
              or with ``shadow.source: history`` the previous complete live run
              (:mod:`prae.workloads.history`).
    none      no shadow.

The built-ins' parameters are declared here, not in their modules, so checking a spec does
not import pyarrow or torch.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from types import ModuleType

from prae.config import PraeConfig, WorkloadSpec
from prae.errors import ConfigError, WorkloadError
from prae.workloads.params import Param, read_params

BUILTIN_MODULES = {
    "etl": "prae.workloads.etl",
    "train": "prae.workloads.train",
    "replay": "prae.workloads.replay",
    "service": "prae.workloads.service",
    "tasks": "prae.workloads.tasks",
}

_TRACE_HELP = "a trace as 'bitbrains:<vm>', 'alibaba:<machine>' or 'google:<file stem>' (see prae.workloads.traces)"

PARAMS: dict[str, dict[str, Param]] = {
    "etl": {
        "rows": Param(
            int,
            8_000_000,
            minimum=1000,
            help="fact rows of the live run (~6.5 s per million on one core)",
        ),
        "partitions": Param(int, 16, minimum=1, maximum=4096),
        "customers": Param(int, 200_000, minimum=100, help="distinct join keys"),
        "skew": Param(
            float, 1.3, minimum=1.01, maximum=4.0, help="Zipf exponent of the key distribution"
        ),
        "threads": Param(int, 1, minimum=1, maximum=256),
        "keep_data": Param(bool, False, help="keep the generated Parquet after the run"),
        "simulate_s": Param(
            float, None, minimum=0.1, help="length of a 'simulate' shadow (default: estimated)"
        ),
    },
    "train": {
        "samples": Param(int, 300_000, minimum=256),
        "features": Param(int, 64, minimum=1, maximum=65536),
        "hidden": Param(int, 512, minimum=1, maximum=65536),
        "classes": Param(int, 10, minimum=2, maximum=100_000),
        "epochs": Param(int, 4, minimum=1, maximum=10_000),
        "batch_size": Param(int, 256, minimum=1),
        "eval_fraction": Param(float, 0.25, minimum=0.01, maximum=0.9),
        "threads": Param(int, 1, minimum=1, maximum=256),
        "lr": Param(float, 1e-3, minimum=0.0),
        "simulate_s": Param(
            float, None, minimum=0.1, help="length of a 'simulate' shadow (default: estimated)"
        ),
    },
    "replay": {
        # VM 41 from row 3510: all four resources vary (picked by scanning VMs 1-79).
        "trace": Param(str, "bitbrains:41", help=_TRACE_HELP),
        "start": Param(int, 3510, minimum=0, help="first trace row"),
        "steps": Param(int, 90, minimum=2, help="trace rows to replay"),
        "step_s": Param(float, 1.0, minimum=0.05, help="seconds each trace row lasts here"),
        "cpu_max": Param(
            float, 1.0, minimum=0.01, maximum=64, help="cores at the window's CPU peak"
        ),
        "mem_max": Param(
            int, 256 * 1024**2, minimum=1024**2, help="bytes held at the window's memory peak"
        ),
        "disk_max": Param(float, 20e6, minimum=0, help="bytes/s written at the disk peak"),
        "net_max": Param(
            float, 20e6, minimum=0, help="bytes/s sent over loopback at the network peak"
        ),
    },
    "service": {
        # VM 52 from row 6690: a CPU curve with clear swings (picked by scanning VMs 1-79).
        "pattern": Param(
            str, "bitbrains:52", help=_TRACE_HELP + ", whose CPU curve shapes the request rate"
        ),
        "start": Param(int, 6690, minimum=0),
        "steps": Param(int, 60, minimum=2),
        "step_s": Param(float, 1.0, minimum=0.05),
        "rps_max": Param(float, 150.0, minimum=1.0, help="requests/s at the pattern's peak"),
        "work_ms": Param(float, 3.0, minimum=0.0, help="CPU milliseconds per request"),
        "response_kb": Param(float, 32.0, minimum=0.0),
        "cache_mb": Param(
            float, 128.0, minimum=0.0, help="most memory the response cache grows to"
        ),
        "connections": Param(int, 4, minimum=1, maximum=256),
        "idle_exit_s": Param(
            float, 30.0, minimum=1.0, help="a mirror shadow exits after this long without requests"
        ),
    },
    "tasks": {
        "stages": Param(
            str,
            "1x20,3x25,2x20",
            help="LANESxSECONDS per stage, comma-separated: parallel lanes x seconds of work each",
        ),
        "task_cpu": Param(float, 1.0, minimum=0.05, maximum=1.0, help="CPUs each task asks Ray for and burns"),
        "task_s": Param(float, 2.0, minimum=0.1, help="seconds of work per task (a lane runs them one after another)"),
        "task_mem_mb": Param(float, 64.0, minimum=0.0, help="resident memory each task holds"),
    },
}


def builtin_module(kind: str) -> ModuleType:
    return importlib.import_module(BUILTIN_MODULES[kind])


def check_spec(spec: WorkloadSpec, role: str) -> dict[str, object]:
    """Everything that can be known wrong before starting; returns the built-in's filled params."""
    source = f"workload '{spec.name}'"
    if role not in ("live", "shadow"):
        raise WorkloadError(f"{source}: role must be 'live' or 'shadow', got {role!r}")
    mode = spec.shadow.mode
    if role == "shadow" and mode == "none":
        raise WorkloadError(f"{source}: its shadow mode is 'none', so it has no shadow to run")
    if mode == "mirror" and spec.kind != "service":
        raise ConfigError(
            source,
            "shadow.mode",
            f"'mirror' copies requests to the shadow, but kind '{spec.kind}' takes no requests",
            "use mode 'sample' (or 'simulate'), or kind 'service'",
        )
    if (
        spec.shadow_plays_curve
        and spec.shadow.source == "profile"
        and not any(p.cpu is not None or p.mem is not None for p in spec.profile.phases)
    ):
        raise ConfigError(
            source,
            "profile.phases",
            f"shadow mode 'simulate' for kind '{spec.kind}' replays the profile's phases, but none gives cpu or memory",
            "add 'profile: {phases: [{name: load, progress_end: 0.3, cpu: 1, memory: 512MiB}, ...]}',"
            " or 'shadow: {source: history}' (the previous run), or use mode 'sample'",
        )
    try:
        json.dumps(dict(spec.params))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            source,
            "params",
            f"must be plain YAML values: {exc}",
            "use numbers, strings, lists and mappings",
        ) from exc
    if spec.kind in PARAMS:
        params = read_params(spec.name, spec.params, PARAMS[spec.kind])
        if spec.kind == "tasks":
            from prae.workloads.tasks import parse_stages

            parse_stages(spec.name, params["stages"])
        return params
    if spec.kind == "python":
        _check_entrypoint(spec, source)
    elif spec.kind == "command":
        command_argv(spec)
    else:
        raise ConfigError(
            source,
            "kind",
            f"unknown kind {spec.kind!r}",
            f"use one of python, command, {', '.join(PARAMS)}",
        )
    return dict(spec.params)


def check_workloads(config: PraeConfig) -> None:
    """Every workload of a config, for each role it will run in, checked before anything
    starts; a mistake is reported against the file and the full field path
    (``workloads[2].params.stages``), as a parse error would be."""
    for i, spec in enumerate(config.workloads):
        roles = ("live",) if spec.shadow.mode == "none" else ("live", "shadow")
        for role in roles:
            try:
                check_spec(spec, role)
            except ConfigError as err:
                raise ConfigError(config.source, f"workloads[{i}].{err.field}", err.problem, err.fix) from err


def _check_entrypoint(spec: WorkloadSpec, source: str) -> None:
    entry = spec.entrypoint or ""
    module, _, func = entry.partition(":")
    if not module or not func:
        raise ConfigError(
            source,
            "entrypoint",
            f"kind 'python' needs 'module:function', got {entry!r}",
            "e.g. mypkg.jobs:nightly",
        )
    top = module.split(".")[0]
    if top not in sys.modules:
        path = [os.getcwd(), *sys.path]
        if importlib.machinery.PathFinder.find_spec(top, path) is None:
            raise ConfigError(
                source,
                "entrypoint",
                f"module '{top}' (of {entry!r}) is not importable from {os.getcwd()} or the Python path",
                "install it, start PRAE from its directory, or add its directory to PYTHONPATH",
            )


def command_argv(spec: WorkloadSpec) -> list[str]:
    source = f"workload '{spec.name}'"
    try:
        argv = shlex.split(spec.entrypoint or "")
    except ValueError as exc:
        raise ConfigError(
            source,
            "entrypoint",
            f"cannot split {spec.entrypoint!r} into arguments: {exc}",
            "fix the quoting",
        ) from exc
    if not argv:
        raise ConfigError(
            source, "entrypoint", "is empty", "set 'entrypoint' to the command to run"
        )
    prog = argv[0]
    found = (
        shutil.which(prog) if os.sep not in prog else (prog if os.access(prog, os.X_OK) else None)
    )
    if found is None:
        raise ConfigError(
            source,
            "entrypoint",
            f"'{prog}' is not an executable {'file' if os.sep in prog else 'on PATH'}",
            "give an absolute path or a program on PATH (commands run without a shell)",
        )
    argv[0] = str(Path(found).resolve()) if os.sep in prog else found
    return argv
