"""The classification closed form (`ufm.classify`) against the check values of docs/metrics.md:
the optimum, its condition numbers, stationarity, the existence boundary, impossible parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncinspect.errors import UsageError
from ncinspect.ufm.classify import classify_closed_form
from ncinspect.ufm.reports import classify_measure
from ncinspect.ufm.solver import solve_classify
from tests.helpers.ufm_cases import CLASSIFY_TABLE


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
