"""Merge laws of the accumulators (`stats`), property-based with hypothesis.

Random shapes (K, D, N) and seeds: merges are commutative and associative and equal the one-pass
statistics, for `ClassMoments`, `ClassSums` with `ClassScatter`, and `RegressionMoments`.
Derandomized, so CI runs the same examples every time.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ncinspect.stats.classification import ClassMoments, ClassScatter, ClassSums, plan_scatter
from ncinspect.stats.regression import RegressionMoments
from tests.helpers.properties import PROPERTY, make, problems


def allclose(a: np.ndarray, b: np.ndarray) -> bool:
    scale = max(1.0, float(np.max(np.abs(a))) if np.size(a) else 1.0)
    return np.allclose(a, b, rtol=1e-10, atol=1e-10 * scale)


def _three_parts(n: int, seed: int) -> list[slice]:
    rng = np.random.default_rng(seed + 2)
    cuts = np.sort(rng.integers(0, n + 1, 2))
    return [slice(0, cuts[0]), slice(cuts[0], cuts[1]), slice(cuts[1], n)]


@PROPERTY
@given(problems)
def test_class_moments_merge_laws(p) -> None:
    k, d, extra, seed = p
    x, y, _, _ = make(k, d, extra, seed)
    a, b, c = (ClassMoments.from_batch(x[s], y[s], k) for s in _three_parts(len(y), seed))
    whole = ClassMoments.from_batch(x, y, k)
    for left, right in [(a.merge(b), b.merge(a)), (a.merge(b).merge(c), a.merge(b.merge(c)))]:
        assert np.array_equal(left.counts, right.counts)
        assert allclose(left.means, right.means) and allclose(left.m2, right.m2)
    merged = c.merge(a).merge(b)
    assert np.array_equal(merged.counts, whole.counts)
    assert allclose(merged.means, whole.means) and allclose(merged.m2, whole.m2)


@PROPERTY
@given(problems)
def test_class_sums_and_scatter_merge_laws(p) -> None:
    k, d, extra, seed = p
    x, y, w, b = make(k, d, extra, seed)
    parts = _three_parts(len(y), seed)
    sums = [ClassSums.from_batch(x[s], y[s], k) for s in parts]
    whole = ClassSums.from_batch(x, y, k)
    ab = sums[0].merge(sums[1])
    assert np.array_equal(ab.sums, sums[1].merge(sums[0]).sums)  # float addition commutes
    assert allclose(ab.merge(sums[2]).sums, sums[0].merge(sums[1].merge(sums[2])).sums)
    assert allclose(ab.merge(sums[2]).sums, whole.sums)
    for route in ("dxd", "class_span"):
        plan = plan_scatter(whole.moments(), w, b, route)
        sc = [ClassScatter.from_batch(plan, x[s], y[s]) for s in parts]
        one = ClassScatter.from_batch(plan, x, y)
        left, right = sc[0].merge(sc[1]).merge(sc[2]), sc[2].merge(sc[0].merge(sc[1]))
        for m in (left, right):
            assert (m.n, m.correct, m.ncc_mismatch) == (one.n, one.correct, one.ncc_mismatch)
            assert allclose(m.scatter, one.scatter) and allclose(m.within, one.within)


@PROPERTY
@given(st.integers(1, 6), st.integers(1, 3), st.integers(3, 40), st.integers(0, 2**32 - 1))
def test_regression_moments_merge_laws(d: int, t: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + rng.normal(size=d)
    yt = rng.normal(size=(n, t))
    yhat = rng.normal(size=(n, t))
    parts = _three_parts(n, seed)
    a, b, c = (RegressionMoments.from_batch(x[s], yt[s], yhat[s]) for s in parts)
    whole = RegressionMoments.from_batch(x, yt, yhat)
    fields = ("feature_mean", "feature_scatter", "unit_second", "target_mean", "target_scatter")
    for m in (a.merge(b).merge(c), c.merge(b.merge(a)), b.merge(c).merge(a)):
        assert m.n == whole.n and m.n_zero_norm == whole.n_zero_norm
        assert math.isclose(m.rss, whole.rss, rel_tol=1e-10, abs_tol=1e-10)
        for f in fields:
            assert allclose(getattr(m, f), getattr(whole, f)), f
