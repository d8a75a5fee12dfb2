"""`stats.blocks`: `dot_error_bound` bounds every float32 / float64 dot product, cancellation
included, and is not vacuous; `thin_matmul` equals one product to summation rounding."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ncinspect.stats.blocks as st
from ncinspect.stats.blocks import UNIT32, UNIT64, dot_error_bound

# --------------------------------------------------------------------------------------------
# the error bound


@pytest.mark.parametrize("d", [1, 3, 64, 512, 2048])
def test_dot_error_bound_holds_for_float32_products(d: int) -> None:
    rng = np.random.default_rng(d)
    a = rng.standard_normal((300, d)) * rng.uniform(0.1, 1e3, (300, 1))
    b = rng.standard_normal((40, d))
    # cancellation: rows nearly orthogonal to some b, and exactly ties between two columns
    a[:100] -= (a[:100] @ b[0])[:, None] * b[0] / (b[0] @ b[0])
    b[1] = b[0] * (1 + 1e-7)
    exact = np.asarray(a, np.longdouble) @ np.asarray(b, np.longdouble).T
    approx = a.astype(np.float32) @ b.astype(np.float32).T
    bound = dot_error_bound(d, UNIT32) * np.outer(
        np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    )
    assert np.all(np.abs(approx - exact) <= bound)
    approx64 = a @ b.T
    bound64 = dot_error_bound(d, UNIT64) * np.outer(
        np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    )
    assert np.all(np.abs(approx64 - exact) <= bound64)


def test_dot_error_bound_is_not_vacuous() -> None:
    # the float32 bound is a few D x u32, far below the quantities it certifies
    assert dot_error_bound(512, UNIT32) < 600 * UNIT32
    assert dot_error_bound(512, UNIT64) < 600 * UNIT64


# --------------------------------------------------------------------------------------------
# thin products


@pytest.mark.parametrize(
    ("rows", "d", "n"),
    [(600, 512, 9), (1000, 256, 32), (37, 512, 9), (600, 512, 33), (5, 3, 2)],
)
def test_thin_matmul_equals_one_product(rows: int, d: int, n: int) -> None:
    """Row pieces (first two cases: over 10^6 multiply-adds, N <= 32, a short last piece) or
    one call (small, or N > 32): the product of a naive float64 loop to summation rounding."""
    rng = np.random.default_rng(rows + n)
    a = rng.standard_normal((rows, d)) + 3.0
    b = np.ascontiguousarray(rng.standard_normal((n, d)).T)
    padded = np.full((rows + 4, n), np.nan)
    out = padded[2:-2]  # a view: nothing outside it may be written
    got = st.thin_matmul(a, b, out=out)
    assert got is out
    assert np.isnan(padded[:2]).all() and np.isnan(padded[-2:]).all()
    naive = np.array([[math.fsum(a[i] * b[:, j]) for j in range(n)] for i in range(rows)])
    scale = np.abs(a) @ np.abs(b)
    assert np.all(np.abs(got - naive) <= st.dot_error_bound(d, st.UNIT64) * scale)
