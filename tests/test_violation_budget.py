"""The violation-budget allocation policy (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from prae.policy.violation_budget import LEVELS, allocate, allocate_quantiles, tail_levels

L3 = (0.95, 0.99, 0.999)


def test_worked_example_from_the_docstring() -> None:
    c = np.array([[10.0, 10.1, 10.2]] * 5 + [[4.0, 8.0, 16.0]])
    res = allocate(c, 0.01, levels=L3)
    np.testing.assert_allclose(res.alloc, [10.2] * 5 + [4.0])
    assert res.alloc.sum() == pytest.approx(55.0)
    assert (1 - res.level).mean() <= 0.01
    uniform = c[:, 1].sum()  # everyone at q0.99
    assert uniform == pytest.approx(58.5)


def test_budget_is_respected_and_beats_one_level_for_all() -> None:
    rng = np.random.default_rng(0)
    s = 200
    base = rng.lognormal(0, 1, s)
    spread = rng.lognormal(-1, 1.2, s)  # heterogeneous tails
    z = np.array([0.0, 1.2816, 1.6449, 2.3263])  # q0.5, 0.9, 0.95, 0.99 of a normal
    q = base[:, None] + spread[:, None] * np.concatenate([[-1.2816], z])[None, :]
    for budget in (0.01, 0.02, 0.05):
        res = allocate_quantiles(q, budget)
        assert np.nanmean(1 - res.level) <= budget + 1e-12
        # one level for all that meets the same budget: the lowest level with 1 - tau <= budget
        tau = min(t for t in LEVELS if 1 - t <= budget + 1e-12)
        one = tail_levels(q)[:, LEVELS.index(tau)].sum()
        assert res.alloc.sum() <= one + 1e-9


def test_spiky_workloads_get_the_budget() -> None:
    steady = [10.0, 10.05, 10.1, 10.2, 10.3, 10.4]
    spiky = [2.0, 4.0, 6.0, 12.0, 14.0, 20.0]
    c = np.array([steady] * 9 + [spiky])
    res = allocate(c, 0.01)
    assert res.level[-1] < res.level[0]


def test_leading_dims_are_independent_and_invalid_rows_ignored() -> None:
    c = np.array([[10.0, 10.1, 10.2]] * 5 + [[4.0, 8.0, 16.0]])
    stacked = np.stack([c, 3 * c])
    res = allocate(stacked, 0.01, levels=L3)
    np.testing.assert_allclose(res.alloc[1], 3 * res.alloc[0])
    with_nan = np.concatenate([c, np.full((1, 3), np.nan)])
    r2 = allocate(with_nan, 0.01, levels=L3)
    assert np.isnan(r2.alloc[-1]) and np.isnan(r2.level[-1])
    np.testing.assert_allclose(r2.alloc[:-1], allocate(c, 0.01, levels=L3).alloc)


def test_tail_extrapolation_matches_the_formula() -> None:
    q = np.array([1.0, 2.0, 3.0, 4.0, 8.0])
    t = tail_levels(q)
    assert t[LEVELS.index(0.999)] == pytest.approx(8.0 + 4.0 * np.log(10) / np.log(5))
    assert (np.diff(t) >= 0).all()


def test_bad_budget_fails_with_the_rule() -> None:
    with pytest.raises(ValueError, match="budget must be in"):
        allocate(np.ones((2, 6)), 0.0)
    with pytest.raises(ValueError, match="levels"):
        allocate(np.ones((2, 3)), 0.01)
