"""A cluster of identical nodes that start slowly, driven by per-workload allocations.

Pure numpy, no Ray, no clock. One call of :func:`simulate` replays one policy:

Inputs, on a grid of ``step_s`` seconds, aligned to the *target* step (the step the
allocation is in force for; a policy with lead L decided it at step tau - L):

    demand    (S, T, R)  usage of each workload (NaN = not running = 0)
    alloc     (S, T, R)  what the policy reserves (or requests) for each workload
    reserved  (S, T)     bool: the allocation is held for the workload (a placement group);
                         False = only asked of the autoscaler (a floor request), not held

The model, step by step (resources R are e.g. cpu and mem; a node has ``capacity[r]``):

1. Wanted nodes: ``want(tau) = max_r ceil(sum_s alloc[s, tau, r] * (1 + headroom) / capacity[r])``
   -- a fluid packing of the summed allocation, plus a uniform headroom (the knob every
   policy is swept over).
2. Node start-up: the decision for tau is known at tau - L, so nodes are launched at
   ``tau - startup`` when ``L >= startup`` and arrive for tau; a policy with a shorter
   lead gets them ``startup - L`` steps late. Launched nodes are billed from launch:
   every launch costs ``startup_s`` of node time before it serves.
3. Scale-down: a node stays up until it has not been wanted for ``idle_timeout_s``.
4. Serving: held allocations are placed in order of size, scaled down together if the
   up nodes cannot hold them all; a workload uses its own placement first; what it
   needs beyond it (the reactive path) takes *unreserved* capacity, which nobody holds:
   ``pending(tau) = max(0, sum_s excess_s - (capacity_up - sum_s placed_s))``.
   Capacity held but unused by its workload is not lent out (a placement group is not).

Outputs (:class:`ClusterOutcome`): node-hours (including boot time), pending demand in
resource-seconds (and as a share of demand), slack (capacity up minus usage served),
held-but-unused reservation, launches, and the nodes series.

Worked number: 16-core nodes, 15-min start-up, 5-min steps. A policy wanting 20 nodes
for one step and 10 otherwise launches 10 nodes 3 steps early; with a 10-min idle
timeout they stay 2 steps after: 10 nodes x (3 boot + 1 + 2) steps x 5 min = 5 node-hours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class NodeType:
    """One node type. ``capacity``: per resource, in the resources' raw units."""

    name: str
    capacity: tuple[float, ...]  # e.g. (16 cores, 64 GiB in bytes)


@dataclass(frozen=True)
class ClusterSpec:
    node: NodeType
    startup_s: float = 900.0
    idle_timeout_s: float = 600.0
    max_nodes: int | None = None

    def steps(self, step_s: float) -> tuple[int, int]:
        """(start-up, idle timeout) in whole grid steps, rounded up."""
        return (int(math.ceil(self.startup_s / step_s - 1e-9)), int(math.ceil(self.idle_timeout_s / step_s - 1e-9)))


@dataclass
class ClusterOutcome:
    node_hours: float
    boot_node_hours: float  # the part spent booting
    demand: np.ndarray  # (R,) resource-seconds of demand
    pending: np.ndarray  # (R,) resource-seconds of demand that waited
    slack: np.ndarray  # (R,) resource-seconds of capacity up but not used
    reserved_unused: np.ndarray  # (R,) resource-seconds held in placements, unused
    launches: int
    nodes: np.ndarray = field(repr=False)  # (T,) nodes up (serving) per step

    @property
    def pending_share(self) -> np.ndarray:
        """(R,) pending / demand."""
        return np.where(self.demand > 0, self.pending / np.maximum(self.demand, 1e-300), 0.0)


def _rolling_max(x: np.ndarray, window: int) -> np.ndarray:
    """max(x[t - window + 1 .. t]) for each t (window >= 1)."""
    out = x.copy()
    for k in range(1, window):
        out[k:] = np.maximum(out[k:], x[:-k])
    return out


def wanted_nodes(alloc_sum: np.ndarray, capacity: np.ndarray, headroom: float) -> np.ndarray:
    """(T, R) summed allocation -> (T,) nodes wanted."""
    need = np.nan_to_num(alloc_sum) * (1.0 + headroom) / capacity[None, :]
    return np.ceil(need.max(axis=1) - 1e-9).clip(min=0).astype(np.int64)


def simulate(
    demand: np.ndarray,
    alloc: np.ndarray,
    spec: ClusterSpec,
    step_s: float,
    lead_steps: int,
    headroom: float = 0.0,
    reserved: np.ndarray | None = None,
    score_from: int = 0,
) -> ClusterOutcome:
    """Replay one policy on the cluster; see the module docstring for the model.

    demand, alloc: (S, T, R); reserved: (S, T) bool (default: all held). Steps before
    ``score_from`` drive the cluster but are not counted.
    """
    y = np.nan_to_num(np.asarray(demand, dtype=np.float64)).clip(min=0)
    a = np.nan_to_num(np.asarray(alloc, dtype=np.float64)).clip(min=0)
    s_n, t_n, r_n = y.shape
    cap = np.asarray(spec.node.capacity, dtype=np.float64)[:r_n]
    boot, idle = spec.steps(step_s)
    held = a if reserved is None else a * np.asarray(reserved, dtype=bool)[:, :, None]

    want = wanted_nodes(a.sum(axis=0), cap, headroom)  # (T,)
    if spec.max_nodes is not None:
        want = np.minimum(want, spec.max_nodes)
    # Nodes wanted for tau are launched when the decision is known (tau - lead) and
    # arrive boot steps later: a short lead makes them late by (boot - lead) steps.
    late = max(0, boot - lead_steps)
    arriving = np.concatenate([np.zeros(late, np.int64), want[: t_n - late]]) if late else want
    up = _rolling_max(arriving, max(1, idle + 1))  # stays until unwanted for idle steps
    # The cluster exists at the start: the first steps' nodes need no boot.
    up[: late + 1] = np.maximum(up[: late + 1], want[: late + 1])
    launches_t = np.diff(np.concatenate([[up[0]], up])).clip(min=0)

    # Serving, per step and resource.
    u = up[:, None] * cap[None, :]  # (T, R) capacity up
    held_sum = held.sum(axis=0)  # (T, R)
    scale = np.ones_like(held_sum)  # (T, R): held allocations that fit are placed whole
    np.divide(u, held_sum, out=scale, where=held_sum > u)
    placed = held * scale[None]  # (S, T, R)
    inside = np.minimum(y, placed)
    excess = (y - placed).clip(min=0).sum(axis=0)  # (T, R)
    free = (u - placed.sum(axis=0)).clip(min=0)
    pending_t = (excess - free).clip(min=0)
    served = y.sum(axis=0) - pending_t

    sl = slice(score_from, t_n)
    step_h = step_s / 3600.0
    boot_h = float(launches_t[sl].sum()) * boot * step_h
    return ClusterOutcome(
        node_hours=float(up[sl].sum()) * step_h + boot_h,
        boot_node_hours=boot_h,
        demand=y.sum(axis=0)[sl].sum(axis=0) * step_s,
        pending=pending_t[sl].sum(axis=0) * step_s,
        slack=(u - served)[sl].clip(min=0).sum(axis=0) * step_s,
        reserved_unused=(placed - inside).sum(axis=0)[sl].sum(axis=0) * step_s,
        launches=int(launches_t[sl].sum()),
        nodes=up,
    )


def count_resizes(alloc: np.ndarray, alive: np.ndarray) -> tuple[int, float]:
    """Changes of each workload's allocation between consecutive steps while it runs.

    alloc: (S, T, R); alive: (S, T) bool. Returns (resizes, workload-steps alive); a
    change of any resource at a step counts once.
    """
    a = np.nan_to_num(np.asarray(alloc, dtype=np.float64))
    both = alive[:, 1:] & alive[:, :-1]
    changed = (np.abs(np.diff(a, axis=1)) > 1e-9).any(axis=2) & both
    return int(changed.sum()), float(alive.sum())
