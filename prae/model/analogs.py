"""The analog point-forecast candidate and quantiles: what followed the past moments most
like now.

Plain numpy. For a series and a row t, the ``ANALOG_PATTERN`` values ending at t are
compared with the same-length stretch ending at each past row l of the last
``ANALOG_LIBRARY`` (sum of absolute differences, in the series' own units), among the rows
whose outcome ``l + lead`` is already known at t. The candidate is the median of the
outcomes of the ``ANALOG_NEIGHBOURS`` closest ones (ties: the most recent first). NaN where
fewer are known (a young series; a stretch with a missing value is never compared).

Why: Bitbrains CPU bursts at irregular times (no period, no day), but each VM bursts in
its own way -- a burst of one VM lasts ~8 steps at a level it keeps, another's decays
within 3 -- and its last hour says where it is in that shape. The model's 48-step window
and its training on other VMs know shapes on average; the VM's own past knows its shape.
Measured with ``prae.backtest`` (lead 900 s, 30 days) as a sixth candidate of
``prae.model.combination``'s choice, median WAPE ratio to the last value (cpu / mem / disk
/ net):

- 40 validation VMs (251-300, not multiples of 5), where it was chosen: 0.797 / 0.694 /
  0.807 / 0.761 -> 0.754 / 0.680 / 0.775 / 0.752 (pattern 12, 10 neighbours, library
  2016). Pattern 6 / 3 gave cpu 0.760 / 0.763; 5 / 20 neighbours 0.769 / 0.759 (pattern
  6); a library of 1008 / 4032 rows 0.756 / 0.754.
- the 100 held-out VMs (``bench/backtest_speed.py``): 0.908 / 0.782 / 0.705 / 0.689 ->
  0.881 / 0.775 / 0.682 / 0.678; slack at 1 % and q0.9 coverage within 0.004 of before;
  the backtest 233 -> 291 s (this search ~60 s of it, on two threads).

It is brute force: every row compares 12 values with each of 2017 moments, per resource:
~0.3 ms per workload and tick in a micro-bench, ~0.6-0.7 ms in the engine's loop, where the
rest of a tick's choice is vectorised across workloads (README: 1000 workloads tick in 1.3 s
with it, 0.63 s without; ``predictor.analog_candidate: false`` turns it off). Carrying the sums' tree from
row to row (each node of ``_window_sums``' tree is the same for every row that uses it) was
tried: bit for bit the same, 0.18 ms in the micro-bench, but the loop's tick only went from
167 to 157 ms at 100 workloads, for ~1-2 MB of kept sums per workload. Not kept.
One search for many workloads at once (their histories side by side as columns of one
array: bit for bit the same per workload) was slower, not faster: at 1000 random-walk
workloads of 4 resources, lead 30, 0.40 ms each one by one, 2.7 ms each in one array
(its temporaries leave the cache) and 0.40 ms in arrays of 32. The cost is the arithmetic
over the library, not the calls (2026-11-30).

The same search gives the **analog quantiles**: the mean of the ``QUANTILES`` of the
outcomes of the ``ANALOG_CLOSE`` (15) and of the ``ANALOG_SPREAD`` (60) closest moments
(the closest count twice), NaN until 60 are known. They say how far this workload's next
value strays from moments like now, and how often: ``prae.model.combination.blend_analog``
averages them with the model's quantiles before the calibration. Chosen on the 40
validation VMs, replaying the backtest's stored forecasts through the blend, the
calibration and the allocation (mem's slack at 1 % over the best baseline's; every
resource, end to end, in the model card): 0.824 with the model's alone; the 60 closest
alone at share 0.75: 0.794 (15 / 120 closest: 0.798 / 0.795; 30 at shares 0.5 / 1: 0.800 /
0.798; a pattern of 6 / 24 values 0.806 / 0.794, a library of 4032 rows 0.795); the mean
of the 15 and the 60: 0.788 (of 30 and 60: 0.791; of 15, 30 and 60: 0.789; of 15, 60 and
120: 0.788). Tried there and not kept: the outcomes as changes from each moment's last
value added to the last value now (0.804); averaging after calibrating each source on its
own (0.791, but q0.9 coverage 0.911); weighing the model and the analog per workload by
their recent pinball loss (0.791); the analog's spread as the calibration's normaliser
(0.796); cpu/disk/net's tail choice for mem too (0.793 end to end, against 0.794: since
2026-11-30 it is on, for steady memory; ``prae.model.tails``). One
search gives the median and the quantiles; one partition of the distances finds the 10th,
15th and 60th closest (0.31 -> 0.37 ms per engine call in a micro-bench at 4096 rows).

The backtest computes every row at once (``analog_track``), the live engine the newest row
of a workload's bounded history (``analog_now``). The distances are summed in one fixed
order (``_window_sums``), so the two agree bit for bit wherever the history reaches back
``analog_reach`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from prae.resources import QUANTILES

ANALOG: tuple[str, ...] = ("analog",)
ANALOG_PATTERN = 12  # values compared (an hour of 5-min steps)
ANALOG_NEIGHBOURS = 10  # closest past moments whose outcomes are taken
ANALOG_SPREAD = 60  # closest past moments whose outcomes give the analog quantiles (below)
ANALOG_CLOSE = 15  # the closest of those, whose quantiles are averaged with those of all 60
ANALOG_LIBRARY = 2016  # past moments searched, the newest first (a week of 5-min steps)
_DTYPE = np.float32  # distances: half the memory traffic of float64; the outcomes stay float64
_BLOCK = 256  # rows per block of the backtest's pass (memory: ~_BLOCK x library x R floats)


def analog_reach(lead: int) -> int:
    """Rows of history a row's candidate can look at: its own, and those of the oldest
    moment of the library and that moment's pattern."""
    return int(lead) + ANALOG_LIBRARY + ANALOG_PATTERN


def _window_sums(a: np.ndarray, m: int) -> np.ndarray:
    """out[..., i, :] = a[..., i, :] + ... + a[..., i + m - 1, :], summed in an order that
    depends on m only (not on where a block starts): halves, quarters, ... as in m's
    binary digits. (n, L) -> (n - m + 1, L); log2(m) + popcount(m) adds, not m - 1."""
    n_out = a.shape[-2] - m + 1
    out: np.ndarray | None = None
    cur, width, offset, rest = a, 1, 0, m
    while rest:
        if rest & 1:
            part = cur[..., offset : offset + n_out, :]
            out = part.copy() if out is None else out + part
            offset += width
        rest >>= 1
        if rest:
            cur = cur[..., :-width, :] + cur[..., width:, :]
            width *= 2
    assert out is not None
    return out


class AnalogRows(NamedTuple):
    """What the search gives for rows of a series: the point candidate, the median outcome
    of the ``ANALOG_NEIGHBOURS`` nearest moments, (..., R); and the analog quantiles, the
    mean of the ``QUANTILES`` of the outcomes of the ``ANALOG_CLOSE`` and of the
    ``ANALOG_SPREAD`` nearest, (..., R, Q). NaN where not known."""

    median: np.ndarray
    quantiles: np.ndarray

    @classmethod
    def unknown(cls, shape: tuple[int, ...]) -> AnalogRows:
        """Nothing known: a NaN median of ``shape`` (..., R) and NaN quantiles (..., R, Q)."""
        return cls(np.full(shape, np.nan), np.full((*shape, len(QUANTILES)), np.nan))


@dataclass(frozen=True)
class _Prepared:
    """One series laid out for ``_analog_rows``: resources first, ``pad`` rows of padding
    before row 0 so that every look-back index stays >= 0."""

    x: np.ndarray  # (R, pad + T) values in _DTYPE, missing ones 0 (never compared: see penalty)
    values: np.ndarray  # (R, pad + T) the values as given (float64): the outcomes taken
    penalty: np.ndarray  # (R, pad + T) 0 where a moment is usable, inf where not
    own_known: np.ndarray  # (R, pad + T) bool: the pattern ending here is fully known
    pad: int


def _all_known(seen: np.ndarray, before: int, after: int) -> np.ndarray:
    """(R, n) bool: rows l - before .. l + after all inside and known, from ``seen`` (R,
    n + 1), the running count of missing rows (0 first)."""
    n = seen.shape[1] - 1
    out = np.zeros((seen.shape[0], n), dtype=bool)
    if n - after > before:
        out[:, before : n - after] = seen[:, before + after + 1 :] == seen[:, : n - before - after]
    return out


def _prepare(y: np.ndarray, lead: int, pad: int) -> _Prepared:
    """y (T, R) with ``pad`` rows of NaN put before it: enough for rows from
    ``analog_reach(lead) - pad`` on (all of them with the whole reach)."""
    m = ANALOG_PATTERN
    values = np.ascontiguousarray(np.concatenate([np.full((pad, y.shape[1]), np.nan), y]).T)
    missing = np.isnan(values)
    seen = np.concatenate([np.zeros((len(values), 1), np.int64), np.cumsum(missing, axis=1)], axis=1)
    # a past moment l is usable where its pattern and its outcome are known: l - m + 1 .. l + lead
    penalty = np.where(_all_known(seen, m - 1, lead), 0.0, np.inf).astype(_DTYPE)
    x = np.where(missing, 0.0, values).astype(_DTYPE)
    return _Prepared(x, values, penalty, _all_known(seen, m - 1, 0), pad)


def _analog_rows(p: _Prepared, start: int, stop: int, lead: int) -> AnalogRows:
    """Rows [start, stop) of the prepared series: median (stop - start, R), quantiles
    (stop - start, R, Q)."""
    m, lib = ANALOG_PATTERN, ANALOG_LIBRARY
    s0, s1 = p.pad + start - m + 1, p.pad + stop  # padded rows whose values enter the patterns
    # [r, q, u] = x[r, q + u]; row s's moment j back (l = s - lead - j) is [r, s - lead - lib, lib - j]
    back = sliding_window_view(p.x, lib + 1, axis=1)[:, s0 - lead - lib : s1 - lead - lib, ::-1]
    diff = np.abs(p.x[:, s0:s1, None] - back)  # (R, n + m - 1, lib + 1)
    pen = sliding_window_view(p.penalty, lib + 1, axis=1)[:, s0 + m - 1 - lead - lib : s1 - lead - lib, ::-1]
    dist = _window_sums(diff, m) + pen  # (R, n, lib + 1): row start + i, moment j back
    return _outcomes_of_nearest(dist, p.own_known[:, s0 + m - 1 : s1], p.values, p.pad + start)


def _quantiles_of_sorted(srt: np.ndarray) -> np.ndarray:
    """np.quantile's default (linear) at ``QUANTILES`` of rows already sorted, (N, k) ->
    (N, Q). The engine pays this per workload and tick: np.quantile's per-call overhead,
    or the calibration's ``at_rank`` (a rank per row: analog_now 0.43 against 0.385 ms),
    costs more than indexing one set of ranks for all rows."""
    pos = np.asarray(QUANTILES) * (srt.shape[-1] - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, srt.shape[-1] - 1)
    return srt[:, lo] + (srt[:, hi] - srt[:, lo]) * (pos - lo)


def _nearest(d: np.ndarray, kth: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` smallest of each row of d (N, L), whose k-th smallest is
    ``kth`` (N, 1); ties at the k-th taken newest (lowest position) first: (N, k),
    ascending positions."""
    take = d <= kth
    tied = take.sum(axis=-1) > k  # ties at the k-th: the newest of them
    if tied.any():
        dt, at_kth = d[tied], kth[tied]
        closer, even = dt < at_kth, dt == at_kth
        take[tied] = closer | (even & (np.cumsum(even, axis=-1) <= k - closer.sum(axis=-1, keepdims=True)))
    return np.nonzero(take)[1].reshape(-1, k)


def _outcomes_of_nearest(dist: np.ndarray, own: np.ndarray, values: np.ndarray, first: int) -> AnalogRows:
    """The median outcome of the ``ANALOG_NEIGHBOURS`` nearest moments, and the mean of the
    quantiles of the outcomes of the ``ANALOG_CLOSE`` and of the ``ANALOG_SPREAD`` nearest.

    dist: (R, n, lib + 1) distances of rows first .. first + n - 1 of ``values`` (R, ...)
    to the moments 0 .. lib back (inf: not usable); own: (R, n) whether the row's own
    pattern is known. NaN where the pattern is not known or fewer moments are usable than
    neighbours are needed (the quantiles need ``ANALOG_SPREAD``)."""
    out = AnalogRows.unknown(own.shape[::-1])
    usable = np.isfinite(dist).sum(axis=-1)  # (R, n)
    ok = own & (usable >= ANALOG_NEIGHBOURS)
    if not ok.any():
        return out
    d = dist[ok]  # (N, lib + 1), the newest moment first
    # one partition finds every k-th distance (a second one cost ~0.1 ms per engine call)
    part = np.partition(d, [ANALOG_NEIGHBOURS - 1, ANALOG_CLOSE - 1, ANALOG_SPREAD - 1], axis=-1)
    r_idx, i_idx = np.nonzero(ok)

    def outcomes(rows: np.ndarray | None, k: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """(R, n) positions of ``rows`` (None: all; no copies) and their k nearest
        moments' outcomes, sorted: (N, k). The outcome of moment j back is the value at
        l + lead = row - j."""
        if rows is None:
            where, near = (r_idx, i_idx), _nearest(d, part[:, k - 1 : k], k)
        else:
            where, near = (r_idx[rows], i_idx[rows]), _nearest(d[rows], part[rows, k - 1 : k], k)
        vals = values[where[0][:, None], first + where[1][:, None] - near]
        vals.sort(axis=-1)
        return where, vals

    where, vals = outcomes(None, ANALOG_NEIGHBOURS)
    out.median.T[where] = (vals[:, (ANALOG_NEIGHBOURS - 1) // 2] + vals[:, ANALOG_NEIGHBOURS // 2]) / 2
    spread = usable[ok] >= ANALOG_SPREAD
    if spread.any():
        rows = None if spread.all() else spread
        (where, close), (_, wide) = outcomes(rows, ANALOG_CLOSE), outcomes(rows, ANALOG_SPREAD)
        both = _quantiles_of_sorted(close) + _quantiles_of_sorted(wide)
        out.quantiles.transpose(1, 0, 2)[where] = both / 2
    return out


def analog_track(y: np.ndarray, lead: int) -> AnalogRows:
    """Every row of one series: y (T, R) on a regular grid, row 0 its first. Returns the
    median (T, R) and the quantiles (T, R, Q) issued at each row for row + lead, from rows
    <= t."""
    y = np.asarray(y, dtype=np.float64)
    prepared = _prepare(y, int(lead), analog_reach(lead))
    out = AnalogRows.unknown(y.shape)
    for a in range(0, len(y), _BLOCK):
        b = min(len(y), a + _BLOCK)
        rows = _analog_rows(prepared, a, b, int(lead))
        out.median[a:b], out.quantiles[a:b] = rows.median, rows.quantiles
    return out


def analog_now(values: np.ndarray, lead: int) -> AnalogRows:
    """``analog_track``'s newest row for a series' newest rows ``values`` (n, R), the last
    being the newest: median (R,), quantiles (R, Q). The same as ``analog_track`` of the
    whole series wherever n reaches ``analog_reach(lead)`` or holds the series from its
    first row."""
    values = np.asarray(values, dtype=np.float64)
    n, lead = len(values), int(lead)
    if n < lead + ANALOG_PATTERN + ANALOG_NEIGHBOURS - 1:  # fewer past moments than neighbours
        return AnalogRows.unknown(values.shape[1:])
    keep = min(n, analog_reach(lead))
    rows = _analog_rows(_prepare(values[n - keep :], lead, analog_reach(lead) - keep), keep - 1, keep, lead)
    return AnalogRows(rows.median[0], rows.quantiles[0])
