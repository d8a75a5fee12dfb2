"""The float64 L-BFGS solver (`ufm.solver`) against the closed forms, fixed and seeded random
cases, beyond the existence boundary; deterministic, and leaving torch's RNG and threads alone."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncinspect.errors import UsageError
from ncinspect.ufm.classify import classify_closed_form
from ncinspect.ufm.regress import make_targets, regress_closed_form
from ncinspect.ufm.reports import classify_measure, regress_measure
from ncinspect.ufm.solver import ClassifySolution, RegressSolution, solve_classify, solve_regress
from tests.helpers.ufm_cases import (
    CLASSIFY_TABLE,
    REGRESS_TABLE,
    SOLVER_ACCURACY,
    random_classify_cases,
    random_regress_cases,
)

CLASSIFY_KEYS = ("q", "p", "margin", "w_norm_sq", "h_norm_sq", "condition_number", "loss")


# ------------------------------------------------------------------------------------------
# Classification solver


def _assert_classify_close(sol: ClassifySolution, tol: float = SOLVER_ACCURACY) -> None:
    opt = classify_closed_form(sol.k, sol.n, sol.lambda_w, sol.lambda_h, sol.alpha)
    measured = classify_measure(sol)
    assert sol.converged, (sol.grad_norm, sol.iterations)
    for key in CLASSIFY_KEYS:
        assert measured[key] == pytest.approx(getattr(opt, key), abs=tol), key


@pytest.mark.parametrize(("alpha", "q", "margin", "w_sq", "h_sq"), CLASSIFY_TABLE)
def test_classify_solver_reaches_spec_table(
    alpha: float, q: float, margin: float, w_sq: float, h_sq: float
) -> None:
    sol = solve_classify(4, 8, 5, 0.01, 0.01, alpha, seed=3)
    _assert_classify_close(sol)
    measured = classify_measure(sol)
    assert measured["q"] == pytest.approx(q, abs=5e-7)
    assert measured["margin"] == pytest.approx(margin, abs=1e-4)
    assert measured["w_norm_sq"] == pytest.approx(w_sq, abs=1e-4)
    assert measured["h_norm_sq"] == pytest.approx(h_sq, abs=1e-4)
    assert sol.seconds < 10
    assert sol.weight.shape == (4, 8) and sol.features.shape == (20, 8)
    assert sol.bias.shape == (4,) and list(np.bincount(sol.labels)) == [5, 5, 5, 5]
    assert sol.loss_history[-1] <= sol.loss_history[0]


@pytest.mark.parametrize("case", random_classify_cases())
def test_classify_solver_reaches_closed_form_random(
    case: tuple[int, int, int, float, float, float],
) -> None:
    k, d, n, lw, lh, alpha = case
    assert classify_closed_form(k, n, lw, lh, alpha).exists
    _assert_classify_close(solve_classify(k, d, n, lw, lh, alpha, lambda_b=1e-3, seed=k))


def test_classify_solver_beyond_existence_boundary_goes_to_zero() -> None:
    # q* = sqrt(5 * 0.15 * 0.15) = 0.335 > 1/4: the minimizer is W = 0, H = 0.
    opt = classify_closed_form(4, 5, 0.15, 0.15)
    assert not opt.exists
    sol = solve_classify(4, 8, 5, 0.15, 0.15, seed=2)
    assert sol.converged
    assert np.abs(sol.weight).max() < 1e-6 and np.abs(sol.features).max() < 1e-6
    measured = classify_measure(sol)
    assert measured["q"] == pytest.approx(0.25, abs=1e-9)
    assert measured["loss"] == pytest.approx(math.log(4), abs=1e-12)
    # The same with label smoothing pushing q* over the line: alpha/K + c' >= 1/K.
    assert not classify_closed_form(4, 5, 0.01, 0.01, alpha=0.95).exists


def test_classify_solver_is_deterministic_and_leaves_torch_rng_alone() -> None:
    import torch

    state = torch.random.get_rng_state()
    a = solve_classify(3, 4, 3, 0.01, 0.02, seed=5)
    b = solve_classify(3, 4, 3, 0.01, 0.02, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.features, b.features)
    c = solve_classify(3, 4, 3, 0.01, 0.02, seed=6)
    assert not np.array_equal(a.weight, c.weight)


def test_classify_max_iter_is_honoured_and_reported() -> None:
    sol = solve_classify(4, 8, 5, 0.01, 0.01, max_iter=3)
    assert sol.iterations <= 3 and not sol.converged and sol.grad_norm > sol.tol


# ------------------------------------------------------------------------------------------
# Regression solver


def _assert_regress_close(sol: RegressSolution, sigma: np.ndarray) -> None:
    opt = regress_closed_form(sigma, sol.lambda_h, sol.lambda_w)
    measured = regress_measure(sol)
    assert sol.converged, (sol.grad_norm, sol.iterations)
    assert opt.wwt is not None
    np.testing.assert_allclose(measured["wwt"], opt.wwt, atol=SOLVER_ACCURACY, rtol=0)
    np.testing.assert_allclose(
        measured["residual_cov"], opt.residual_cov, atol=SOLVER_ACCURACY, rtol=0
    )
    assert measured["loss"] == pytest.approx(opt.loss, abs=SOLVER_ACCURACY)


@pytest.mark.parametrize(("sigma", "lh", "lw", "wwt", "tol"), REGRESS_TABLE)
def test_regress_solver_reaches_spec_table(
    sigma: np.ndarray, lh: float, lw: float, wwt: np.ndarray, tol: float
) -> None:
    y = make_targets(sigma, 40, seed=1)
    sol = solve_regress(y, 4, lh, lw, seed=2)
    _assert_regress_close(sol, sigma)
    np.testing.assert_allclose(sol.weight @ sol.weight.T, wwt, atol=max(tol, 1e-4), rtol=0)
    assert sol.features.shape == (40, 4) and sol.weight.shape == (2, 4)


@pytest.mark.parametrize("case", random_regress_cases())
def test_regress_solver_reaches_closed_form_random(
    case: tuple[np.ndarray, int, float, float],
) -> None:
    sigma, d, lh, lw = case
    assert regress_closed_form(sigma, lh, lw).regime == "collapse"
    y = make_targets(sigma, 50, seed=d, mean=np.full(sigma.shape[0], 3.0))
    _assert_regress_close(solve_regress(y, d, lh, lw, seed=d), sigma)


def test_regress_solver_other_regimes() -> None:
    sigma = np.diag([4.0, 1.0])
    y = make_targets(sigma, 30, seed=4)
    _assert_regress_close(solve_regress(y, 4, 1.5, 1.0), sigma)  # partial
    zero = solve_regress(y, 4, 3.0, 3.0)
    _assert_regress_close(zero, sigma)
    assert np.abs(zero.features).max() < 1e-6


def test_solve_regress_needs_d_at_least_t() -> None:
    with pytest.raises(UsageError, match=r"feature dimension D = 2 with T = 3 targets"):
        solve_regress(np.random.default_rng(0).normal(size=(10, 3)), 2, 0.1, 0.1)


def test_solver_restores_thread_count() -> None:
    import torch

    before = torch.get_num_threads()
    solve_regress(make_targets(np.eye(2), 10), 3, 0.1, 0.1)
    assert torch.get_num_threads() == before
