"""The child process of a WorkloadProcess: ``python -m prae.workloads.launch <role dir>``.

Reads ``<role dir>/.prae/launch.json`` (written by WorkloadProcess), locks a shadow into its
own directory (:mod:`prae.workloads.sandbox`), runs the workload, and leaves
``.prae/result.json`` (what the workload returned), ``.prae/meta.json`` (how it ran) or
``.prae/error.txt`` (why it failed) behind. Exit codes: 0 done, 1 the workload raised,
2 it could not be loaded, 3 the sandbox could not be set up, 128+N killed by signal N.

Kind ``command`` is exec'd in place of this process (same pid, no Python left behind), with:
``PRAE_ROLE`` (live|shadow), ``PRAE_FRACTION``, ``PRAE_SHADOW_MODE``, ``PRAE_WORK_DIR``,
``PRAE_DATA_DIR``, ``PRAE_PROGRESS_FILE`` (append lines ``<fraction> [phase]``),
``PRAE_RESULT_FILE`` (write a JSON object there to return one), ``PRAE_PARAMS`` (JSON), ``PRAE_SEED``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from prae.workloads.context import WorkloadContext, install_stop_handler
from prae.workloads.progress import ProgressWriter
from prae.workloads.specio import spec_from_dict

EXIT_FAILED = 1
EXIT_LOAD = 2
EXIT_SANDBOX = 3


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def _fail(meta_dir: Path, code: int, text: str) -> int:
    (meta_dir / "error.txt").write_text(text)
    sys.stderr.write(text)
    return code


def main(argv: list[str]) -> int:
    role_dir = Path(argv[1]).resolve()
    meta_dir = role_dir / ".prae"
    cfg = json.loads((meta_dir / "launch.json").read_text())
    spec = spec_from_dict(cfg["spec"])
    role = cfg["role"]
    sandbox = "none"
    if role == "shadow":
        with contextlib.suppress(OSError):
            os.nice(int(cfg.get("nice", 0)))
        from prae.workloads.sandbox import restrict_writes

        try:
            sandbox = restrict_writes([role_dir, *cfg.get("writable", [])])
        except OSError as exc:
            return _fail(meta_dir, EXIT_SANDBOX, f"cannot lock the shadow into {role_dir}: {exc}\n")
    ctx = WorkloadContext(
        name=spec.name,
        kind=spec.kind,
        role=role,
        shadow_mode=spec.shadow.mode,
        fraction=float(cfg["fraction"]),
        params=dict(cfg["params"]),
        work_dir=role_dir,
        seed=int(cfg.get("seed", 0)),
        tag=cfg.get("tag", ""),
        inputs=tuple(Path(p) for p in cfg.get("inputs", [])),
        progress=ProgressWriter(meta_dir / "progress"),
        spec=spec,
    )
    _write_json(
        meta_dir / "meta.json", {"sandbox": sandbox, "pid": os.getpid(), "started": time.time()}
    )
    if spec.start_delay_s > 0:
        time.sleep(spec.start_delay_s)  # the workload's own start_delay_s, live and shadow alike
    plays_curve = role == "shadow" and spec.shadow_plays_curve
    if spec.kind == "command" and not plays_curve:  # a simulated shadow plays a curve instead
        argv_cmd = cfg["argv"]
        os.execv(argv_cmd[0], argv_cmd)  # environment already set by WorkloadProcess
    install_stop_handler(ctx)
    try:
        func = _load(spec.kind, spec.entrypoint, plays_curve)
    except Exception:
        return _fail(
            meta_dir,
            EXIT_LOAD,
            f"cannot load workload '{spec.name}' ({spec.kind}):\n{traceback.format_exc()}",
        )
    started = time.time()
    try:
        value = func(ctx)
    except SystemExit:
        raise
    except BaseException:
        return _fail(
            meta_dir,
            EXIT_FAILED,
            f"workload '{spec.name}' ({role}) failed:\n{traceback.format_exc()}",
        )
    ctx.report_progress(1.0)
    result = value if isinstance(value, dict) else ({} if value is None else {"value": value})
    _write_json(meta_dir / "result.json", result)
    _write_json(
        meta_dir / "meta.json",
        {
            "sandbox": sandbox,
            "pid": os.getpid(),
            "started": started,
            "elapsed_s": time.time() - started,
        },
    )
    return 0


def _load(kind: str, entrypoint: str | None, plays_curve: bool) -> Any:
    if plays_curve:  # before the user's function: a simulated shadow never runs it
        from prae.workloads.simulate import run_profile

        return run_profile
    if kind == "python":
        module_name, _, func_name = (entrypoint or "").partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, func_name)
    from prae.workloads.kinds import builtin_module

    return builtin_module(kind).run


def _exit_now(code: int) -> None:
    """Leave without interpreter teardown: the results are on disk and children are gone, and
    tearing down torch alone costs ~2 CPU-seconds here, a shadow's whole budget."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    try:
        exit_code = main(sys.argv)
    except SystemExit as stop:
        exit_code = stop.code if isinstance(stop.code, int) else 1
    _exit_now(exit_code)
