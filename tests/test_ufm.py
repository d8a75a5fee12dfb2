"""UFM theory: closed forms against the specification's check values, the L-BFGS solver against
the closed forms (fixed and seeded random cases), the collapse metrics of the numerical optima,
and the input parsers."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from ncinspect.errors import InputError, UsageError
from ncinspect.metrics.results import jsonable
from ncinspect.render.ufm import report_rows, report_title
from ncinspect.ufm.classify import classify_closed_form
from ncinspect.ufm.inputs import load_targets, parse_float_list, parse_matrix, zip_lambdas
from ncinspect.ufm.regress import make_targets, regress_closed_form
from ncinspect.ufm.reports import (
    classify_measure,
    classify_report,
    regress_measure,
    regress_report,
    sweep_classify,
    sweep_regress,
)
from ncinspect.ufm.solver import ClassifySolution, RegressSolution, solve_classify, solve_regress

HAS_REGRESSION = importlib.util.find_spec("ncinspect.metrics.regression") is not None
needs_regression = pytest.mark.skipif(
    not HAS_REGRESSION, reason="ncinspect.metrics.regression (NRC metrics) has not landed yet"
)

# Specification, "Unconstrained feature model (UFM)": K = 4, n = 5, lambda_W = lambda_H = 0.01.
# (alpha, q*, margin, ||w||^2, ||h||^2)
CLASSIFY_TABLE = [
    (0.0, 0.022361, 3.7310, 6.2571, 1.2514),
    (0.1, 0.047361, 2.8967, 4.8579, 0.9716),
    (0.3, 0.097361, 1.9839, 3.3271, 0.6654),
]
# (Sigma, lambda_H, lambda_W, W W^T, tolerance: the third value is printed to 3 decimals)
REGRESS_TABLE = [
    (np.diag([4.0, 1.0]), 0.1, 0.1, np.diag([1.9, 0.9]), 1e-12),
    (np.diag([4.0, 1.0]), 0.2, 0.05, np.diag([3.8, 1.8]), 1e-12),
    (
        np.array([[2.0, 1.0], [1.0, 2.0]]),
        0.2,
        0.2,
        np.array([[1.166, 0.366], [0.366, 1.166]]),
        1e-3,
    ),
]
SOLVER_ACCURACY = 1e-4
CLASSIFY_KEYS = ("q", "p", "margin", "w_norm_sq", "h_norm_sq", "condition_number", "loss")


def _random_classify_cases() -> list[tuple[int, int, int, float, float, float]]:
    rng = np.random.default_rng(20240611)
    cases = []
    for alpha in (0.0, 0.1, 0.3):
        k = int(rng.integers(3, 7))
        d = int(rng.integers(k, 17))
        n = int(rng.integers(3, 7))
        lw, lh = np.exp(rng.uniform(math.log(1e-3), math.log(5e-2), size=2))
        cases.append((k, d, n, float(lw), float(lh), alpha))
    return cases


def _random_regress_cases() -> list[tuple[np.ndarray, int, float, float]]:
    rng = np.random.default_rng(7)
    cases = []
    for _ in range(3):
        t = int(rng.integers(2, 4))
        a = rng.normal(size=(t, t))
        sigma = a @ a.T + 0.3 * np.eye(t)
        lam_min = float(np.linalg.eigvalsh(sigma)[0])
        c = float(rng.uniform(0.05, 0.9)) * lam_min
        ratio = float(np.exp(rng.uniform(-1.0, 1.0)))  # lambda_H / lambda_W
        d = int(rng.integers(4, 9))
        cases.append((sigma, d, math.sqrt(c * ratio), math.sqrt(c / ratio)))
    return cases


# ------------------------------------------------------------------------------------------
# Classification closed form


@pytest.mark.parametrize(("alpha", "q", "margin", "w_sq", "h_sq"), CLASSIFY_TABLE)
def test_classify_closed_form_matches_spec_table(
    alpha: float, q: float, margin: float, w_sq: float, h_sq: float
) -> None:
    opt = classify_closed_form(4, 5, 0.01, 0.01, alpha)
    assert opt.exists
    assert opt.q == pytest.approx(q, abs=5e-7)
    assert opt.margin == pytest.approx(margin, abs=5e-5)
    assert opt.w_norm_sq == pytest.approx(w_sq, abs=5e-5)
    assert opt.h_norm_sq == pytest.approx(h_sq, abs=5e-5)
    assert opt.p == pytest.approx(1 - 3 * opt.q, abs=1e-15)
    assert opt.rho == pytest.approx(math.sqrt(opt.w_norm_sq * opt.h_norm_sq), rel=1e-12)
    assert opt.rho == pytest.approx(0.75 * opt.margin, rel=1e-12)


def test_classify_condition_numbers_match_spec() -> None:
    ce = classify_closed_form(4, 5, 0.01, 0.01, 0.0)
    ls = classify_closed_form(4, 5, 0.01, 0.01, 0.1)
    assert round(ce.condition_number, 2) == 3.73
    assert round(ls.condition_number, 2) == 3.43
    assert ls.condition_number < ce.condition_number
    # Against the Hessian itself: diag(pi) - pi pi^T restricted to the complement of 1.
    pi = np.array([ce.p] + [ce.q] * 3)
    hess = np.diag(pi) - np.outer(pi, pi)
    eig = np.linalg.eigvalsh(hess)[1:]  # drop the eigenvalue 0 of the all-ones direction
    assert eig[0] == pytest.approx(ce.q, rel=1e-9)
    assert eig[-1] == pytest.approx(4 * ce.p * ce.q, rel=1e-9)
    assert ce.condition_number == pytest.approx(eig[-1] / eig[0], rel=1e-9)


def test_classify_closed_form_is_stationary_along_the_etf_family() -> None:
    # The loss restricted to ETF configurations, as a function of the margin s, has its minimum at
    # the closed form's margin; checks the normalisation convention independently of the solver.
    k, n, lw, lh, alpha = 5, 3, 0.02, 0.005, 0.2
    opt = classify_closed_form(k, n, lw, lh, alpha)

    def loss(s: float) -> float:
        z = np.array([s, 0, 0, 0, 0.0])
        logp = z - np.log(np.exp(z).sum())
        target = np.full(k, alpha / k)
        target[0] += 1 - alpha
        rho = (k - 1) / k * s
        return float(-(target * logp).sum()) + k * math.sqrt(n * lw * lh) * rho

    s = opt.margin
    assert loss(s) == pytest.approx(opt.loss, rel=1e-12)
    assert loss(s) < loss(s * 0.99) and loss(s) < loss(s * 1.01)


def test_classify_existence_boundary() -> None:
    # q* = sqrt(1 * 0.25 * 0.25) = 0.25 = 1/K exactly: no non-zero minimizer.
    at = classify_closed_form(4, 1, 0.25, 0.25)
    assert not at.exists
    assert (at.q, at.p, at.margin, at.w_norm_sq, at.h_norm_sq) == (0.25, 0.25, 0.0, 0.0, 0.0)
    assert at.condition_number == 1.0
    assert at.loss == pytest.approx(math.log(4))
    assert at.q_star == pytest.approx(0.25)
    below = classify_closed_form(4, 1, 0.2499, 0.2499)
    assert below.exists and 0 < below.margin < 1e-2
    assert not classify_closed_form(4, 5, 0.01, 0.01, alpha=1.0).exists


def test_classify_two_classes_condition_number_is_one() -> None:
    opt = classify_closed_form(2, 4, 0.01, 0.01)
    assert opt.condition_number == 1.0
    sol = solve_classify(2, 3, 4, 0.01, 0.01)
    assert classify_measure(sol)["condition_number"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, 5, 0.01, 0.01), "classes K = 1, expected an integer >= 2"),
        ((4, 0, 0.01, 0.01), "samples per class n = 0, expected an integer >= 1"),
        ((4, 5, 0.0, 0.01), "lambda_w = 0.0, expected a finite value > 0"),
        ((4, 5, 0.01, 0.01, 1.5), "label smoothing alpha = 1.5, expected a value in [0, 1]"),
    ],
)
def test_classify_rejects_impossible_parameters(args: tuple, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        classify_closed_form(*args)


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


@pytest.mark.parametrize("case", _random_classify_cases())
def test_classify_solver_reaches_closed_form_random(
    case: tuple[int, int, int, float, float, float],
) -> None:
    k, d, n, lw, lh, alpha = case
    assert classify_closed_form(k, n, lw, lh, alpha).exists
    _assert_classify_close(solve_classify(k, d, n, lw, lh, alpha, lambda_b=1e-3, seed=k))


def test_classify_report_numerical_solution_is_collapsed() -> None:
    report = classify_report(5, 7, 4, 0.005, 0.01, alpha=0.1, seed=1)
    assert set(report) == {"params", "closed_form", "numerical"}
    num, cf = report["numerical"], report["closed_form"]
    assert num["converged"] and num["iterations"] > 0
    for key in ("q", "p", "margin", "w_norm_sq", "h_norm_sq", "condition_number"):
        assert num[key] == pytest.approx(cf[key], abs=SOLVER_ACCURACY), key
    metrics = num["metrics"]
    for key in ("nc1", "nc2_etf_means", "nc2_etf_weights", "nc3", "nc3_etf"):
        assert abs(metrics[key]) < 1e-4, (key, metrics[key])
    assert metrics["accuracy"] == 1.0 and metrics["nc4"] == 0.0
    text = json.dumps(jsonable(report), allow_nan=False)
    assert json.loads(text)["closed_form"]["exists"] is True


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


def test_classify_report_needs_room_for_an_etf() -> None:
    with pytest.raises(UsageError, match=r"D = 2 with K = 5 classes; the closed form needs D >= "):
        classify_report(5, 2, 3, 0.01, 0.01)
    closed_only = classify_report(5, None, 3, 0.01, 0.01)
    assert "numerical" not in closed_only


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


@pytest.mark.parametrize("case", _random_regress_cases())
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


@needs_regression
def test_regress_report_metrics_collapse_at_gamma_c() -> None:
    report = regress_report(4, 0.2, 0.2, sigma=[[2.0, 1.0], [1.0, 2.0]], n=40, seed=3)
    cf, num = report["closed_form"], report["numerical"]
    assert cf["regime"] == "collapse" and num["gamma"] == pytest.approx(0.04)
    np.testing.assert_allclose(num["wwt"], cf["wwt"], atol=SOLVER_ACCURACY)
    metrics = num["metrics"]
    for key in ("nrc1", "nrc2", "nrc1_centered", "nrc2_centered", "nrc3"):
        assert abs(metrics[key]) < 1e-4, (key, metrics[key])
    assert metrics["nrc3_gamma"] == pytest.approx(0.04)
    assert json.dumps(jsonable(report), allow_nan=False)


@needs_regression
def test_regress_without_regularization_does_not_collapse() -> None:
    report = regress_report(16, 0.0, 0.0, sigma=np.diag([4.0, 1.0]), n=40, seed=0)
    assert report["closed_form"]["regime"] == "no_regularization"
    assert report["closed_form"]["wwt"] is None
    num = report["numerical"]
    assert num["converged"]
    np.testing.assert_allclose(num["residual_cov"], 0.0, atol=1e-8)  # an exact fit
    assert num["metrics"]["nrc1_centered"] > 0.05
    assert num["metrics"]["nrc2"] > 0.05


def test_regress_report_from_targets_uses_their_covariance() -> None:
    y = make_targets(np.diag([2.0, 0.5]), 25, seed=9)
    report = regress_report(None, 0.1, 0.1, targets=y)
    np.testing.assert_allclose(
        report["closed_form"]["wwt"], np.diag([2**0.5 - 0.1, 0.5**0.5 - 0.1])
    )
    assert "numerical" not in report
    with pytest.raises(UsageError, match="give exactly one of"):
        regress_report(4, 0.1, 0.1, sigma=np.eye(2), targets=y)


def test_solve_regress_needs_d_at_least_t() -> None:
    with pytest.raises(UsageError, match=r"feature dimension D = 2 with T = 3 targets"):
        solve_regress(np.random.default_rng(0).normal(size=(10, 3)), 2, 0.1, 0.1)


# ------------------------------------------------------------------------------------------
# Sweeps and rows


def test_sweep_classify_closed_form_and_numerical() -> None:
    rows = sweep_classify(4, 5, 0.01, 0.01, [0.0, 0.1, 0.3])
    assert [r["params"]["alpha"] for r in rows] == [0.0, 0.1, 0.3]
    qs = [r["closed_form"]["q"] for r in rows]
    assert qs == pytest.approx([t[1] for t in CLASSIFY_TABLE], abs=5e-7)
    assert all("numerical" not in r for r in rows)
    solved = sweep_classify(3, 2, 0.01, 0.01, [0.0, 0.2], d=3)
    for r in solved:
        assert r["numerical"]["margin"] == pytest.approx(r["closed_form"]["margin"], abs=1e-4)
    with pytest.raises(UsageError, match="alphas is empty"):
        sweep_classify(4, 5, 0.01, 0.01, [])


def test_sweep_regress_pairs() -> None:
    pairs = zip_lambdas([0.1, 0.2], [0.1])
    assert pairs == [(0.1, 0.1), (0.2, 0.1)]
    rows = sweep_regress(np.diag([4.0, 1.0]), [(0.1, 0.1), (0.2, 0.05), (3.0, 3.0)])
    assert [r["closed_form"]["regime"] for r in rows] == ["collapse", "collapse", "zero"]
    np.testing.assert_allclose(rows[1]["closed_form"]["wwt"], np.diag([3.8, 1.8]), atol=1e-12)
    with pytest.raises(UsageError, match="found 2 lambda_h and 3 lambda_w values"):
        zip_lambdas([0.1, 0.2], [0.1, 0.2, 0.3])


def test_report_rows_are_plain_triples() -> None:
    report = classify_report(4, 4, 3, 0.01, 0.01, seed=0)
    rows = report_rows(report)
    assert all(isinstance(r, tuple) and len(r) == 3 for r in rows)
    assert all(isinstance(cell, str) for r in rows for cell in r)
    by_label = {r[0]: r for r in rows}
    assert by_label["non-zero minimizer exists"][1] == "yes"
    q_row = by_label["wrong-class probability q"]
    assert float(q_row[1]) == pytest.approx(float(q_row[2]), abs=1e-5)
    assert by_label["nc1"][1] == "0"
    assert "K=4 n=3 D=4" in report_title(report)
    closed = report_rows(regress_report(None, 0.1, 0.1, sigma=np.diag([4.0, 1.0])))
    assert closed[0] == ("regime", "collapse", "-")
    assert ("W W^T", "[[1.9, 0], [0, 0.9]]", "-") in closed


# ------------------------------------------------------------------------------------------
# Inputs


def test_parse_matrix_literal_and_files(tmp_path) -> None:  # noqa: ANN001
    m = parse_matrix("[[2,1],[1,2]]")
    np.testing.assert_array_equal(m, [[2.0, 1.0], [1.0, 2.0]])
    npy = tmp_path / "cov.npy"
    np.save(npy, np.diag([4.0, 1.0]))
    np.testing.assert_array_equal(parse_matrix(npy), np.diag([4.0, 1.0]))
    txt = tmp_path / "cov.txt"
    txt.write_text("4 0\n0 1\n")
    np.testing.assert_array_equal(parse_matrix(str(txt)), np.diag([4.0, 1.0]))
    one = tmp_path / "one.txt"
    one.write_text("3\n")
    np.testing.assert_array_equal(parse_matrix(one), [[3.0]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[2,1],[1,2]",
            "--targets-cov: cannot parse '[[2,1],[1,2]'; expected nested lists of numbers like "
            "[[2,1],[1,2]]",
        ),
        (
            "[[1,2,3],[4,5,6]]",
            "--targets-cov: found shape (2, 3); expected a square (T, T) matrix with T >= 1, "
            "like [[2,1],[1,2]]",
        ),
        (
            "[[2,1],[0,2]]",
            "--targets-cov: not symmetric (largest |S - S^T| entry 1); expected a symmetric "
            "covariance matrix",
        ),
        (
            "[[1,2],[2,1]]",
            "--targets-cov: has a negative eigenvalue (-1); expected a positive semi-definite "
            "covariance matrix",
        ),
        ("[[1,'a'],[1,1]]", "--targets-cov: found non-numeric entries in \"[[1,'a'],[1,1]]\""),
        ("[[1,2],[3]]", "--targets-cov: rows of lengths [2, 1] in '[[1,2],[3]]'; expected a"),
        (
            "cov.json",
            "--targets-cov: found 'cov.json'; expected a matrix literal like [[2,1],[1,2]] or a "
            "file ending in .npy, .txt, .csv",
        ),
        ("missing.npy", "--targets-cov: file 'missing.npy' not found; expected an existing file"),
    ],
)
def test_parse_matrix_errors_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_matrix(text, "--targets-cov")
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_parse_float_list_and_load_targets(tmp_path) -> None:  # noqa: ANN001
    assert parse_float_list("0, 0.1,0.3", "--alpha") == [0.0, 0.1, 0.3]
    with pytest.raises(UsageError, match=r"--alpha: found '0,x'; expected a number or a comma"):
        parse_float_list("0,x", "--alpha")
    path = tmp_path / "y.npy"
    np.save(path, np.arange(6.0))
    assert load_targets(path).shape == (6, 1)
    bad = tmp_path / "y.txt"
    bad.write_text("1 2\nnan 3\n")
    with pytest.raises(InputError, match="targets contain NaN or Inf"):
        load_targets(bad)
    with pytest.raises(UsageError, match="not found"):
        load_targets(tmp_path / "nope.npy")


def test_import_is_cheap() -> None:
    code = (
        "import sys, ncinspect.ufm.classify, ncinspect.ufm.regress, ncinspect.ufm.solver, "
        "ncinspect.ufm.reports, ncinspect.ufm.distance, ncinspect.ufm.inputs; "
        "print('torch' in sys.modules, 'scipy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_solver_restores_thread_count() -> None:
    import torch

    before = torch.get_num_threads()
    solve_regress(make_targets(np.eye(2), 10), 3, 0.1, 0.1)
    assert torch.get_num_threads() == before
