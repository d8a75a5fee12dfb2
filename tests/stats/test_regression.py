"""The regression accumulators (`stats.regression`): projections on a basis (`UnitProjections`)
capture what the D x D unit moments capture, and the centred shortcut is taken only where it is
as accurate as centring first."""

from __future__ import annotations

import numpy as np
import pytest

from ncinspect.stats.regression import RegressionCentred, UnitProjections


def test_unit_projections_capture_what_the_dxd_moments_capture() -> None:
    rng = np.random.default_rng(11)
    n, d = 400, 12
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 5 * rng.standard_normal(d)
    x[[7, 8]] = 0.0  # zero rows: left out of the uncentred statistics
    x[9] *= 1e-170  # tiny and huge rows take the scaled route
    x[10] *= 1e170
    mu = x[11].copy()  # a row equal to the centre: left out of the centred statistics
    dxd = RegressionCentred.from_batch(x, np.zeros(d))  # the uncentred D x D unit moments
    dxd_centred = RegressionCentred.from_batch(x, mu)
    q, _ = np.linalg.qr(rng.standard_normal((d, 4)))
    unc, cen = UnitProjections.pair_from_batch(x, q, mu)
    assert (unc.n_zero_norm, cen.n_zero_norm) == (dxd.n_zero_norm, dxd_centred.n_zero_norm)
    assert (unc.n_zero_norm, cen.n_zero_norm) == (2, 1)
    for basis in (q[:, :2], q[:, 2:], q @ np.linalg.qr(rng.standard_normal((4, 3)))[0]):
        assert unc.captured(basis) == pytest.approx(dxd.captured(basis), rel=1e-12)
        assert cen.captured(basis) == pytest.approx(dxd_centred.captured(basis), rel=1e-12)
    single = UnitProjections.from_batch(x, q, mu)
    np.testing.assert_allclose(single.gram, cen.gram, rtol=1e-12)
    halves = UnitProjections.from_batch(x[:150], q).merge(UnitProjections.from_batch(x[150:], q))
    np.testing.assert_allclose(halves.gram, unc.gram, rtol=1e-12)


def test_centred_shortcut_only_where_it_is_as_accurate_as_centring_first() -> None:
    """The centred unit projections come from the uncentred product (x Q - c Q, ||x||^2 - 2 x.c
    + ||c||^2) only for rows far enough from the centre; rows close to it (collapsed features,
    where the shortcut cancels) are centred first. Both kinds agree with extended precision."""
    rng = np.random.default_rng(3)
    n, d = 600, 40
    c = 50.0 * rng.standard_normal(d)  # a large common offset, as after a ReLU
    x = c + 1e-5 * rng.standard_normal((n, d))  # collapsed onto the centre: the shortcut
    # would cancel (relative error ~1e-3 here), so these rows must be centred first
    x[:300] = c + 40.0 * rng.standard_normal((300, d))  # these are far
    q, _ = np.linalg.qr(rng.standard_normal((d, 5)))

    def exact(rows: np.ndarray) -> np.ndarray:
        xl, cl, ql = (np.asarray(a, dtype=np.longdouble) for a in (rows, c, q))
        unit = (xl - cl) / np.sqrt(np.sum((xl - cl) ** 2, axis=1, keepdims=True))
        return np.asarray((unit @ ql).T @ (unit @ ql), dtype=np.float64)

    spread = np.linalg.norm(x, axis=1) + np.linalg.norm(c)
    shortcut = spread**2 <= 64.0 * np.linalg.norm(x - c, axis=1) ** 2
    assert shortcut[:300].all() and not shortcut[300:].any()
    # far rows only: the shortcut; all rows (one sub-block): centred first, as the near rows need
    for rows in (x[:300], x):
        _, cen = UnitProjections.pair_from_batch(rows, q, c)
        np.testing.assert_allclose(cen.gram, exact(rows), rtol=1e-12)
