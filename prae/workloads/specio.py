"""A WorkloadSpec to JSON and back, to hand it to the launched child process."""

from __future__ import annotations

import dataclasses
from typing import Any

from prae.config import Bounds, Phase, Profile, ResourceAmount, ShadowSpec, WorkloadSpec


def spec_to_dict(spec: WorkloadSpec) -> dict[str, Any]:
    d = dataclasses.asdict(spec)
    d["params"] = dict(spec.params)
    return d


def spec_from_dict(d: dict[str, Any]) -> WorkloadSpec:
    shadow = dict(d["shadow"])
    shadow["resources"] = ResourceAmount(**shadow["resources"])
    shadow["preload"] = tuple(shadow.get("preload", ()))
    profile = dict(d["profile"])
    profile["bounds"] = Bounds(**profile["bounds"])
    profile["phases"] = tuple(Phase(**p) for p in profile["phases"])
    return WorkloadSpec(
        name=d["name"],
        kind=d["kind"],
        entrypoint=d.get("entrypoint"),
        params=dict(d.get("params") or {}),
        resources=ResourceAmount(**d["resources"]),
        shadow=ShadowSpec(**shadow),
        profile=Profile(**profile),
        start_delay_s=d.get("start_delay_s", 0.0),
    )
