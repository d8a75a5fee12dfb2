"""The regression closed form (`ufm.regress`) against the check values of docs/metrics.md, its
regimes, and targets with an exact covariance (`make_targets`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ncinspect.errors import UsageError
from ncinspect.metrics.results import jsonable
from ncinspect.ufm.regress import make_targets, regress_closed_form
from tests.helpers.ufm_cases import REGRESS_TABLE

# ------------------------------------------------------------------------------------------
# Regression closed form


@pytest.mark.parametrize(("sigma", "lh", "lw", "wwt", "tol"), REGRESS_TABLE)
def test_regress_closed_form_matches_spec_table(
    sigma: np.ndarray, lh: float, lw: float, wwt: np.ndarray, tol: float
) -> None:
    opt = regress_closed_form(sigma, lh, lw)
    assert opt.regime == "collapse"
    assert opt.gamma == pytest.approx(lh * lw)
    assert opt.wwt is not None
    np.testing.assert_allclose(opt.wwt, wwt, atol=tol, rtol=0)
    np.testing.assert_allclose(opt.residual_cov, lh * lw * np.eye(2), atol=1e-14)


def test_regress_regimes() -> None:
    sigma = np.diag([4.0, 1.0])
    partial = regress_closed_form(sigma, 1.5, 1.0)  # c = 1.5 in [1, 4]
    assert partial.regime == "partial" and partial.wwt is not None
    np.testing.assert_allclose(
        partial.wwt, np.diag([math.sqrt(1.5) * (2 - math.sqrt(1.5)), 0]), atol=1e-14
    )
    np.testing.assert_allclose(partial.residual_cov, np.diag([1.5, 1.0]), atol=1e-14)
    at_min = regress_closed_form(sigma, 1.0, 1.0)  # c = lambda_min: the boundary is partial
    assert at_min.regime == "partial"
    zero = regress_closed_form(sigma, 3.0, 3.0)
    assert zero.regime == "zero" and zero.wwt is not None
    np.testing.assert_array_equal(zero.wwt, np.zeros((2, 2)))
    np.testing.assert_allclose(zero.residual_cov, sigma)
    assert zero.loss == pytest.approx(2.5)  # tr(Sigma) / 2
    none = regress_closed_form(sigma, 0.0, 0.0)
    assert none.regime == "no_regularization" and none.wwt is None and none.gamma == 0.0
    np.testing.assert_array_equal(none.residual_cov, np.zeros((2, 2)))
    assert json.dumps(jsonable(none.to_dict()), allow_nan=False)


def test_regress_one_penalty_only_is_refused() -> None:
    with pytest.raises(UsageError, match=r"lambda_h = 0.1, lambda_w = 0.0: expected both > 0"):
        regress_closed_form(np.eye(2), 0.1, 0.0)
    with pytest.raises(UsageError, match=r"lambda_h = -1.0, expected a finite value >= 0"):
        regress_closed_form(np.eye(2), -1.0, 0.1)


# ------------------------------------------------------------------------------------------
# Targets


@pytest.mark.parametrize("t", [1, 2, 3, 5])
def test_make_targets_covariance_is_exact(t: int) -> None:
    rng = np.random.default_rng(t)
    a = rng.normal(size=(t, t))
    sigma = a @ a.T + 0.1 * np.eye(t)
    y = make_targets(sigma, 4 * t + 3, seed=t)
    centred = y - y.mean(axis=0)
    np.testing.assert_allclose(centred.T @ centred / y.shape[0], sigma, atol=1e-12, rtol=0)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-13)
    shifted = make_targets(sigma, 4 * t + 3, seed=t, mean=np.arange(t, dtype=float))
    np.testing.assert_allclose(shifted.mean(axis=0), np.arange(t), atol=1e-12)
    np.testing.assert_allclose(shifted - y, np.broadcast_to(np.arange(t), y.shape), atol=1e-12)


def test_make_targets_singular_sigma_and_too_few_samples() -> None:
    sigma = np.array([[1.0, 1.0], [1.0, 1.0]])  # rank 1 is allowed (PSD)
    y = make_targets(sigma, 10)
    np.testing.assert_allclose(np.cov(y.T, bias=True), sigma, atol=1e-12)
    with pytest.raises(UsageError, match=r"samples N = 2 for T = 2 targets; expected an integer"):
        make_targets(np.eye(2), 2)
