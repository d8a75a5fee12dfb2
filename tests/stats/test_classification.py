"""The classification accumulators (`stats.classification`): pass 1 without m2 (`ClassSums`)
equals the naive per-class sums on both sides of the one-hot / sorted-runs switch. Merges are
checked in `test_merge_laws.py`, the metrics in `tests/metrics/test_classification.py`."""

from __future__ import annotations

import numpy as np
import pytest

from ncinspect.stats.classification import _ONE_HOT_MAX_K, ClassMoments, ClassSums


# both sides of the one-hot GEMM / sorted-runs switch, and many classes
@pytest.mark.parametrize("k", [3, _ONE_HOT_MAX_K, _ONE_HOT_MAX_K + 1, 32, 200])
def test_class_sums_equal_the_naive_sums(k: int) -> None:
    rng = np.random.default_rng(k)
    x = rng.standard_normal((1500, 7)).astype(np.float32) + 10
    y = rng.integers(0, k, 1500)
    sums = ClassSums.from_batch(x, y, k)
    naive = np.stack([x[y == c].astype(np.float64).sum(axis=0) for c in range(k)])
    np.testing.assert_allclose(sums.sums, naive, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(sums.counts, np.bincount(y, minlength=k))
    moments = sums.moments()
    np.testing.assert_allclose(moments.means, ClassMoments.from_batch(x, y, k).means, rtol=1e-12)
