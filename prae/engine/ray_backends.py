"""The Ray side of the broker's ports: placement groups and the autoscaler floor."""

from __future__ import annotations

import contextlib
from typing import Any

import ray
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    placement_group_table,
    remove_placement_group,
)


class RayPlacementBackend:
    """Named, detached placement groups: they outlive a crashed allocator, whose successor
    finds them again by name prefix and adopts them (see ``ReservationBroker``)."""

    def __init__(self, strategy: str = "PACK") -> None:
        self.strategy = strategy

    def create(self, name: str, bundles: list[dict[str, float]]) -> PlacementGroup:
        return placement_group(bundles, strategy=self.strategy, name=name, lifetime="detached")

    def is_ready(self, handle: PlacementGroup) -> bool:
        # The table is one GCS lookup; pg.ready() would schedule a task on every call.
        return placement_group_table(handle).get("state") == "CREATED"

    def remove(self, handle: PlacementGroup) -> None:
        # Already gone (e.g. removed by a previous owner): nothing left to leak.
        with contextlib.suppress(Exception):
            remove_placement_group(handle)

    def list_existing(self, prefix: str) -> list[tuple[str, Any]]:
        found = []
        for pg_id, info in placement_group_table().items():
            name = info.get("name") or ""
            if name.startswith(prefix) and info.get("state") != "REMOVED":
                found.append((name, PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id)))))
        return found

    def bundles(self, handle: PlacementGroup) -> list[dict[str, float]]:
        """The group's bundles, to adopt a group a previous allocator created."""
        table = placement_group_table(handle).get("bundles") or {}
        return [dict(table[i]) for i in sorted(table)]

    def in_use(self, handle: PlacementGroup) -> bool:
        """Whether any task or actor is placed in the group.

        Every task or actor scheduled into a bundle takes 0.001 of the group's
        ``bundle_group_<id>`` resource (even with num_cpus=0), so the group is in use
        exactly when that resource's available amount is below its total. Eventually
        consistent (raylets report every ~100 ms): when unsure, say "in use".
        """
        key = f"bundle_group_{handle.id.hex()}"
        total = ray.cluster_resources().get(key)
        if total is None:
            return False  # not (or no longer) placed: nothing can run in it
        return ray.available_resources().get(key, 0.0) < total - 1e-6


class RayCapacityFloor:
    """Owns ``request_resources``: last caller wins cluster-wide, so only the broker calls it."""

    def __init__(self) -> None:
        self.last: list[dict[str, float]] | None = None

    def set_floor(self, bundles: list[dict[str, float]]) -> None:
        from ray.autoscaler.sdk import request_resources

        # request_resources takes whole CPUs in bundles on some providers: round up.
        clean = [{k: (float(int(v + 0.999)) if k == "CPU" else v) for k, v in b.items()} for b in bundles]
        request_resources(bundles=clean) if clean else request_resources(num_cpus=0)
        self.last = clean
