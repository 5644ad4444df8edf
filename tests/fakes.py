"""Fakes for the engine's ports: small, honest implementations, no mocks."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FakePG:
    name: str
    bundles: list[dict[str, float]]
    ready: bool = False
    removed: bool = False


@dataclass
class FakePlacementBackend:
    """Placement groups on a cluster of ``capacity`` CPUs: a group is ready once it fits."""

    capacity: float = 8.0
    groups: list[FakePG] = field(default_factory=list)
    leftovers: list[FakePG] = field(default_factory=list)

    def used(self) -> float:
        return sum(b.get("CPU", 0) for g in self.groups if g.ready and not g.removed for b in g.bundles)

    def create(self, name: str, bundles: list[dict[str, float]]) -> FakePG:
        g = FakePG(name, bundles)
        self.groups.append(g)
        return g

    def is_ready(self, g: FakePG) -> bool:
        if not g.ready and not g.removed:
            need = sum(b.get("CPU", 0) for b in g.bundles)
            g.ready = self.used() + need <= self.capacity
        return g.ready

    def remove(self, g: FakePG) -> None:
        g.removed = True

    def list_existing(self, prefix: str) -> list[tuple[str, Any]]:
        return [(g.name, g) for g in self.leftovers if g.name.startswith(prefix) and not g.removed]

    def live(self) -> list[FakePG]:
        return [g for g in self.groups if not g.removed]


@dataclass
class FakeFloor:
    calls: list[list[dict[str, float]]] = field(default_factory=list)

    def set_floor(self, bundles: list[dict[str, float]]) -> None:
        self.calls.append(bundles)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


counter = itertools.count()


def process_alive(pid: int) -> bool:
    """Running: not gone and not a zombie (one whose parent died is reaped by init, or not)."""
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    except OSError:
        return False
