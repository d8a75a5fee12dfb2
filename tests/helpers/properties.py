"""What the hypothesis property tests share: the settings (derandomized, a fixed budget), the
classification problems they draw (K, D, extra rows, seed) and the data made from one."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

problems = st.tuples(
    st.integers(2, 5),  # K
    st.integers(1, 7),  # D
    st.integers(0, 40),  # extra rows beyond one per class
    st.integers(0, 2**32 - 1),  # seed
)


def make(k: int, d: int, extra: int, seed: int, bias: bool = True):
    """Features (N, D), labels covering every class, weight (K, D), bias (K,) or None."""
    rng = np.random.default_rng(seed)
    n = k + extra
    means = rng.normal(size=(k, d)) * 3.0
    y = np.concatenate([np.arange(k), rng.integers(0, k, extra)]).astype(np.int64)
    rng.shuffle(y)
    x = means[y] + rng.normal(size=(n, d))
    w = means + 0.3 * rng.normal(size=(k, d))
    b = rng.normal(size=k) if bias else None
    return x, y, w, b
