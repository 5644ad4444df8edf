"""The ``prae`` command: ``run``, ``validate``, ``backtest``, ``pretrain``, ``retrain``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from prae.errors import PraeError


def _cmd_validate(args: argparse.Namespace) -> int:
    from prae.config import load_config
    from prae.workloads.kinds import check_workloads

    cfg = load_config(args.config)
    check_workloads(cfg)
    print(f"{args.config}: OK — {len(cfg.workloads)} workload(s): {', '.join(w.name for w in cfg.workloads)}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import ray

    from prae.config import load_config
    from prae.engine.runner import init_ray, print_summary, run, with_overrides
    from prae.workloads.kinds import check_workloads

    cfg = with_overrides(load_config(args.config), store_dir=args.store_dir, observe_only=args.observe_only)
    check_workloads(cfg)  # before Ray starts: a bad workload is a config error, not a dead actor
    started = init_ray(cfg, address=args.address, dashboard=not args.no_dashboard)
    try:
        summary = run(cfg, duration_s=args.duration, keep_serving=args.keep_serving)
    finally:
        if started:
            ray.shutdown()
    print_summary(summary)
    if args.json:
        print(summary.to_json())
    failed = [w.workload for w in summary.workloads if w.exit_code not in (0, None)]
    if failed:
        print(f"workload(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cmd_backtest(args: argparse.Namespace) -> int:
    from prae.backtest.cli import run as run_backtest

    return run_backtest(args)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from train.pretrain import main as pretrain_main

    return pretrain_main(args.rest)


def _cmd_report(args: argparse.Namespace) -> int:
    from prae.report.page import write_report

    print(write_report(args.run_dir))
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from train.retrain import main as retrain_main

    return retrain_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prae", description="Predictive Resource Allocation Engine for Ray")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run workloads from a config with forecasting and reservations")
    r.add_argument("config", help="workload config YAML (e.g. configs/demo.yaml)")
    r.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    r.add_argument("--store-dir", default=None, help="override run.store_dir")
    r.add_argument("--observe-only", action="store_true", help="forecast and record, reserve nothing")
    r.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else an embedded Ray)")
    r.add_argument("--no-dashboard", action="store_true", help="embedded Ray without the dashboard")
    r.add_argument("--keep-serving", action="store_true", help="leave the predictor Serve app running")
    r.add_argument("--json", action="store_true", help="also print the summary as JSON")
    r.set_defaults(func=_cmd_run)

    rp = sub.add_parser("report", help="write RUN_DIR/report.html from a run's summary.json and store")
    rp.add_argument("run_dir", help="the folder `prae run` wrote summary.json into (next to run.store_dir)")
    rp.set_defaults(func=_cmd_report)

    v = sub.add_parser("validate", help="check a config file and exit")
    v.add_argument("config")
    v.set_defaults(func=_cmd_validate)

    b = sub.add_parser("backtest", help="replay traces through the predictor and policies")
    try:
        from prae.backtest.cli import add_arguments
    except ImportError as exc:  # keep `prae run` usable even if an optional piece is broken
        b.add_argument("rest", nargs=argparse.REMAINDER)
        b.set_defaults(func=lambda a, e=exc: (print(f"backtest unavailable: {e}", file=sys.stderr), 2)[1])
    else:
        add_arguments(b)
        b.set_defaults(func=_cmd_backtest)

    for name, fn, helptext in (
        ("pretrain", _cmd_pretrain, "reproduce the shipped pretrained checkpoint (train/pretrain.py)"),
        ("retrain", _cmd_retrain, "fine-tune a checkpoint on a feedback store with Ray Train"),
    ):
        s = sub.add_parser(name, help=helptext, add_help=False)
        s.add_argument("rest", nargs=argparse.REMAINDER)
        s.set_defaults(func=fn)
    return p


# Commands with argument parsers of their own: every argument after the command is theirs.
# (argparse.REMAINDER drops a leading option: `prae retrain --store DIR` was refused.)
PASS_THROUGH = ("pretrain", "retrain")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if at is not None and argv[at] in PASS_THROUGH:
        args = build_parser().parse_args(argv[: at + 1])
        args.rest = argv[at + 1 :]
        return args
    return build_parser().parse_args(argv)


def report_errors(command: Callable[[], int]) -> int:
    """Run a command; a bad input (``PraeError``) is one line naming the fix, exit code 2,
    not a traceback. ``prae`` and the training commands it hands over to use it."""
    try:
        return int(command())
    except PraeError as exc:
        print(f"prae: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return report_errors(lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
