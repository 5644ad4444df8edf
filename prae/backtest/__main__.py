"""``python -m prae.backtest`` == ``prae backtest``."""

from __future__ import annotations

import argparse

from prae.backtest.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prae backtest", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
