"""PRAE vs reactive-only on Ray's fake autoscaling cluster, in one run.

    .venv/bin/python bench/autoscale_proof.py [--delay 15] [--quick]

Starts its own fake multi-node autoscaling cluster for each arm (never `ray stop`: only the
processes of that cluster are stopped), with node start-up delay modelled in the provider
(see prae/testing/fake_cluster.py). Demand grows in steps of 1-CPU units. The last line is
JSON with pending_s_prae, pending_s_reactive (unit-seconds the live demand waited for
resources) and reserved_unused_share_prae. Goal: pending_s_prae <= 0.2 x pending_s_reactive.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from prae.testing.autoscale_proof import ProofConfig, run_proof  # noqa: E402

QUICK = ProofConfig(
    steps=((0.0, 1), (20.0, 3), (40.0, 5), (58.0, 2)),
    duration_s=66.0,
    startup_delay_s=8.0,
    lead_s=18.0,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the shorter schedule the test uses")
    p.add_argument("--delay", type=float, default=None, help="modelled node start-up delay, seconds")
    p.add_argument("--lead", type=float, default=None, help="how far ahead the shadow runs, seconds")
    p.add_argument("--arms", default="prae,reactive")
    p.add_argument("--out", default=None, help="also write the full result JSON here")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else ProofConfig()
    if args.delay is not None:
        cfg = replace(cfg, startup_delay_s=args.delay, lead_s=args.lead or args.delay + 12.0)
    elif args.lead is not None:
        cfg = replace(cfg, lead_s=args.lead)
    out = run_proof(cfg, tuple(a for a in args.arms.split(",") if a))
    for arm, r in out["arms"].items():
        waits = ", ".join(f"{w:.1f}" for w in r["waits"])
        boots = [round(x["up"] - x["requested"], 1) for x in r["launches"]]
        print(f"{arm:>8}: pending {r['pending_s']:.1f} unit-s over {r['units']} units (waits {waits}); "
              f"in reservation {r['in_reservation']}; node launches requested->up {boots} s; "
              f"wall {r['wall_s']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    summary = {k: out[k] for k in ("pending_s_prae", "pending_s_reactive", "reserved_unused_share_prae",
                                   "pending_ratio") if k in out}
    summary["startup_delay_s"] = cfg.startup_delay_s
    summary["lead_s"] = cfg.lead_s
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
