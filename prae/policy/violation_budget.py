"""Spend a violation budget where it is cheapest: per-workload reservation levels.

Pure numpy, no Ray. Input: every workload's calibrated forecast quantiles for one
resource at one target time; output: how much to reserve for each.

The rule
--------
Reserving workload i at quantile level tau_i costs a_i(tau_i) (its forecast quantile)
and leaves it short with probability 1 - tau_i. With a budget beta ("at most beta of
workload-steps short") we pick one level per workload from ``LEVELS`` to

    minimise  sum_i a_i(tau_i)    subject to    mean_i (1 - tau_i) <= beta.

The Lagrangian solution: for a price lambda, every workload independently takes the
level minimising ``a_i(tau) + lambda * (1 - tau)``; lambda is bisected to the smallest
price whose choices fit the budget. A workload whose upper quantiles are close together
(steady) keeps a high level because lowering it saves almost nothing; a spiky workload,
whose q0.999 is far above its q0.95, takes the shortfall budget.

Lagrangian choices can leave part of the budget unspent (the levels are discrete), so a
second pass moves workloads one level down, best saving per unit of probability first,
while the remaining budget allows.

Worked number (budget 1 %, five steady workloads and one spiky, levels 0.95/0.99/0.999):

    steady (x5): q0.95 = 10.0, q0.99 = 10.1, q0.999 = 10.2 cores
    spiky  (x1): q0.95 =  4.0, q0.99 =  8.0, q0.999 = 16.0 cores

One margin for all (every workload at q0.99, 1 % short) reserves 5 * 10.1 + 8.0 = 58.5
cores. The budget is 6 * 1 % = 0.06 of shortfall probability: the steady ones at q0.999
use 5 * 0.001 = 0.005, which leaves the spiky one q0.95 (0.05): 5 * 10.2 + 4.0 = 55.0
cores, 0.92 % short -- 6 % fewer cores for the same violation budget.

Levels between q0.95 and q0.99 that are not forecast quantiles follow an exponential
tail through them: ``q(tau) = q0.99 + (q0.99 - q0.95) * ln((1 - 0.99) / (1 - tau)) / ln(5)``;
e.g. q0.95 = 4, q0.99 = 8 gives q0.97 = 8 - 4 * ln(3) / ln(5) = 5.3. Levels above 0.99
follow a power (Pareto) tail through the same two: ``q(tau) = q0.99 * (q0.99 / q0.95) **
(ln((1 - 0.99) / (1 - tau)) / ln(5))``; the same forecast gives q0.999 = 8 * 2 ** (ln(10) /
ln(5)) = 21.6 (the exponential tail would say 13.7), a steady one (q0.95 = 10.0, q0.99 =
10.1) 10.245 (exponential: 10.243). The ratio q0.99 / q0.95 is capped at
``MAX_TAIL_RATIO`` (3): a mostly idle workload with q0.95 = 0.01 and q0.99 = 1 core would
otherwise be held at ~730 cores at q0.999 (100 ** 1.43) whenever a small pool or a tight
budget pushes it there; capped, 4.8 cores. Where q0.95 is 0 the exponential tail is used
there too. Why a power tail: usage beyond q0.99 is far heavier than an exponential through
q0.95 and q0.99. On 25 training Bitbrains VMs the actuals above q0.99 went past it by
0.6 (mem) to 1.2 (disk) spacings (q0.99 - q0.95) at their median and by 6 (mem) to 100
(net) at their 90th percentile, where an exponential tail puts 0.43 and 1.43; the rows
held at the extrapolated q0.9995 were short 0.4-0.6 % of the time, not 0.05 %. Slack
ratios at 1 % there, exponential -> power (capped): cpu 0.725 -> 0.711, mem 0.836 ->
0.836, disk 0.771 -> 0.761, net 0.911 -> 0.907; PRAE's own shortfall 1.38 / 1.09 / 1.34 /
1.47 % -> 1.33 / 1.03 / 1.26 / 1.40 %. (Scaling the exponential tail by 2 or 3 gave
cpu 0.695 / 0.690 and disk 0.761 / 0.757 but made mem worse, 0.837 / 0.842.) The cap was
set there too: ratios capped at 1.5 / 2 / 3 / 5 / not at all gave disk 0.779 / 0.767 /
0.761 / 0.764 / 0.765, net 0.910 / 0.908 / 0.907 / 0.908 / 0.908, cpu and mem within
0.002 of each other from 2 up. Levels between two forecast quantiles below 0.95 are
interpolated linearly.

Pooled over time
----------------
The budget is a share of workload-*steps*, so the cheapest way to spend it prices a
unit of shortfall probability the same at every step, not only across the workloads of
one step: a calm hour (every workload steady) should not be forced to leave 1 % of its
workloads short when a spiky hour buys far more cores per unit of probability.
``PooledBudget`` carries one price per resource from step to step and nudges it by dual
ascent on the shortfall probability it chose: ``ln price += rate * (chosen - budget) /
budget``. Worked number: rate 0.005, a step that chose 3 % against a 1 % budget raises
the price by exp(0.01) = 1 %; a day of 288 such steps multiplies it by 18. The price
starts at the per-step (``allocate``) price of the first step. Causal: step t's price
uses only the forecasts issued before and at t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prae.resources import QUANTILES

LEVELS: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99, 0.995, 0.999)
MAX_TAIL_RATIO = 3.0  # the power tail's q0.99 / q0.95 is capped here (module docstring)
# Finer grid for the pooled price: with one price for every step, the level is the only
# thing a workload can trade, and a 0.95 -> 0.99 jump is too coarse for steady ones.
# It reaches 0.99995 because a steady workload (q0.99 barely above q0.95) costs almost
# nothing to hold higher still, and each level it climbs leaves budget to a spiky one.
# On 25 training Bitbrains VMs (lead 900 s) the slack ratios at 1 % with the grid ending
# at 0.9995 / 0.9998 / 0.99995 / 0.99999 were cpu 0.741 / 0.736 / 0.725 / 0.725, disk
# 0.772 / 0.771 / 0.771 / 0.771, net 0.912 / 0.911 / 0.911 / 0.910, mem 0.835 / 0.836 /
# 0.836 / 0.836 (PRAE's own shortfall 1.40 -> 1.38 % for cpu).
POOLED_LEVELS: tuple[float, ...] = (
    0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995,
    0.9998, 0.9999, 0.99995,
)  # fmt: skip


@dataclass(frozen=True)
class BudgetAllocation:
    """alloc: shape (..., S) amounts to reserve; level: shape (..., S) the level chosen
    (NaN where the workload had no forecast); price: shape (...) the lambda used."""

    alloc: np.ndarray
    level: np.ndarray
    price: np.ndarray


def tail_levels(
    q: np.ndarray, quantiles: tuple[float, ...] = QUANTILES, levels: tuple[float, ...] = LEVELS
) -> np.ndarray:
    """Forecast values at ``levels``: known quantiles as they are, levels between q0.95 and
    q0.99 by the exponential tail through them, higher levels by the power tail (module
    docstring).

    q: shape (..., Q) -> shape (..., len(levels)), non-decreasing.
    """
    qs = list(quantiles)
    q95, q99 = q[..., qs.index(0.95)], q[..., qs.index(0.99)]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.where(q95 > 0, np.log(np.clip(q99 / q95, 1.0, MAX_TAIL_RATIO)), np.nan)
    cols = []
    for tau in levels:
        below = [x for x in qs if x < tau]
        above = [x for x in qs if x > tau]
        if tau in qs:
            cols.append(q[..., qs.index(tau)])
        elif tau > 0.95:
            k = np.log(0.01 / (1.0 - tau)) / np.log(0.05 / 0.01)
            exponential = q99 + np.maximum(q99 - q95, 0.0) * k
            if tau > 0.99:
                power = q99 * np.exp(log_ratio * k)
                cols.append(np.where(np.isnan(log_ratio), exponential, power))
            else:
                cols.append(exponential)
        elif below and above:
            lo, hi = max(below), min(above)
            f = (tau - lo) / (hi - lo)
            cols.append((1.0 - f) * q[..., qs.index(lo)] + f * q[..., qs.index(hi)])
        else:
            raise ValueError(
                f"level {tau} is below the lowest forecast quantile {min(qs)}; "
                "use levels inside the forecast's range or above 0.95"
            )
    return np.maximum.accumulate(np.stack(cols, axis=-1), axis=-1)


def allocate(
    candidates: np.ndarray,
    budget: float,
    levels: tuple[float, ...] = LEVELS,
    valid: np.ndarray | None = None,
    iterations: int = 24,
) -> BudgetAllocation:
    """Choose one level per workload so the mean shortfall probability is <= ``budget``.

    candidates: shape (..., S, K) reservation at each of the K ``levels`` (from
        ``tail_levels``), non-decreasing in K; NaN rows are treated as not valid.
    budget: allowed share of workload-steps short, in (0, 1), e.g. 0.01.
    valid: shape (..., S) bool, workloads that take part (default: all non-NaN rows).
    Leading dimensions (e.g. time steps, resources) are solved independently.
    """
    if not 0.0 < budget < 1.0:
        raise ValueError(f"budget must be in (0, 1), got {budget}")
    a = np.asarray(candidates, dtype=np.float64)
    tau = np.asarray(levels, dtype=np.float64)
    if a.shape[-1] != tau.size:
        raise ValueError(f"candidates have {a.shape[-1]} levels, levels has {tau.size}")
    ok = ~np.isnan(a).any(axis=-1)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    a = np.where(ok[..., None], a, 0.0)
    n = ok.sum(axis=-1)  # (...)
    miss = 1.0 - tau  # (K,)

    base = a - 1e-12 * tau * (1.0 + np.abs(a))  # ties go to the highest level

    def choose(price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = np.argmin(base + price[..., None, None] * miss, axis=-1)
        short = np.where(ok, miss[k], 0.0).sum(axis=-1)
        return k, short

    # price bracket per problem: the largest saving per unit of probability between two
    # levels, times 4, down to a millionth of it (below that every choice is the lowest
    # level); the bisection runs in log space, 24 halvings leave a factor of ~1.000001
    span = np.where(ok[..., None], a[..., -1:] - a[..., :1], 0.0).max(axis=(-1, -2))
    hi = np.maximum(span, 1e-300) / (np.diff(miss).__abs__().min() if tau.size > 1 else 1.0) * 4.0
    lo = hi * 1e-9
    allowed = budget * n
    for _ in range(iterations):
        mid = np.sqrt(lo * hi)  # geometric midpoint
        _, short = choose(mid)
        fits = short <= allowed + 1e-12
        hi = np.where(fits, mid, hi)
        lo = np.where(fits, lo, mid)
    k, short = choose(hi)
    k = _fill(a, k, ok, miss, allowed - short)
    alloc = np.take_along_axis(a, k[..., None], axis=-1)[..., 0]
    level = np.where(ok, tau[k], np.nan)
    return BudgetAllocation(np.where(ok, alloc, np.nan), level, hi)


def _fill(
    a: np.ndarray, k: np.ndarray, ok: np.ndarray, miss: np.ndarray, left: np.ndarray
) -> np.ndarray:
    """Spend budget the Lagrangian left: move workloads one level down, best saving per
    unit of shortfall probability first, while the cumulative extra shortfall fits."""
    down = np.maximum(k - 1, 0)
    can = ok & (k > 0)
    extra = np.where(can, miss[down] - miss[k], np.inf)
    save = (
        np.take_along_axis(a, k[..., None], -1)[..., 0]
        - np.take_along_axis(a, down[..., None], -1)[..., 0]
    )
    ratio = np.where(can & (save > 0), save / np.maximum(extra, 1e-15), -np.inf)
    order = np.argsort(-ratio, axis=-1, kind="stable")
    take = np.zeros(k.shape, dtype=bool)
    left = left.copy()
    for j in range(k.shape[-1]):  # greedy in ratio order, skipping moves that do not fit
        i = order[..., j : j + 1]
        ex = np.take_along_axis(extra, i, -1)[..., 0]
        fits = (np.take_along_axis(ratio, i, -1)[..., 0] > 0) & (ex <= left + 1e-9)
        np.put_along_axis(take, i, fits[..., None], -1)
        left = np.where(fits, left - ex, left)
    return np.where(take, down, k)


def allocate_quantiles(
    q: np.ndarray,
    budget: float,
    quantiles: tuple[float, ...] = QUANTILES,
    levels: tuple[float, ...] = LEVELS,
    valid: np.ndarray | None = None,
) -> BudgetAllocation:
    """``allocate`` from forecast quantiles. q: shape (..., S, Q) -> alloc (..., S)."""
    return allocate(tail_levels(q, quantiles, levels), budget, levels, valid)


@dataclass(frozen=True)
class PooledBudget:
    """The violation budget spent over workload-steps with one price per resource.

    budget: allowed share of workload-steps short, in (0, 1).
    rate: dual-ascent step on ln(price) per step, relative to the budget (see the module
        docstring); 0.005 lets the price move by a factor e in ~200 steps that are each
        one budget off. On 25 training Bitbrains VMs, rates 0.001 and 0.01 gave slack
        at 1 % within 2 points of each other and 0.05 up to 8 points more; 0.005 sits
        between the two good ones.
    """

    budget: float
    rate: float = 0.005
    levels: tuple[float, ...] = POOLED_LEVELS
    quantiles: tuple[float, ...] = QUANTILES

    def __post_init__(self) -> None:
        if not 0.0 < self.budget < 1.0:
            raise ValueError(f"budget must be in (0, 1), got {self.budget}")
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"rate must be in [0, 1), got {self.rate}")

    def initial_state(self, n_resources: int) -> np.ndarray:
        """ln(price) per resource, NaN = not priced yet (set by the first step)."""
        return np.full(n_resources, np.nan)

    def step(
        self, q: np.ndarray, log_price: np.ndarray, valid: np.ndarray | None = None
    ) -> tuple[BudgetAllocation, np.ndarray]:
        """One step: allocation for every workload, and the next state.

        q: shape (R, S, Q) calibrated quantiles (NaN rows = no forecast);
        log_price: shape (R,) from ``initial_state`` or the previous step.
        Returns (BudgetAllocation with alloc/level (R, S), price (R,)), next log_price.
        """
        cand = tail_levels(np.asarray(q, dtype=np.float64), self.quantiles, self.levels)
        ok = ~np.isnan(cand).any(axis=-1)
        if valid is not None:
            ok &= np.asarray(valid, dtype=bool)
        live = ok.any(axis=-1)  # (R,)
        fresh = np.isnan(log_price) & live
        if fresh.any():  # the per-step price of the first step with workloads
            first = allocate(cand, self.budget, self.levels, valid=ok)
            log_price = np.where(fresh, np.log(np.maximum(first.price, 1e-300)), log_price)
        a = np.where(ok[..., None], cand, 0.0)
        miss = 1.0 - np.asarray(self.levels)
        price = np.exp(np.nan_to_num(log_price, nan=0.0))
        base = a - 1e-12 * np.asarray(self.levels) * (1.0 + np.abs(a))  # ties: higher level
        k = np.argmin(base + price[:, None, None] * miss, axis=-1)  # (R, S)
        n = np.maximum(ok.sum(axis=-1), 1)
        chosen = np.where(ok, miss[k], 0.0).sum(axis=-1) / n
        step = self.rate * (chosen - self.budget) / self.budget
        nxt = np.where(live, log_price + step, log_price)
        alloc = np.take_along_axis(a, k[..., None], axis=-1)[..., 0]
        level = np.where(ok, np.asarray(self.levels)[k], np.nan)
        return BudgetAllocation(np.where(ok, alloc, np.nan), level, price), nxt
