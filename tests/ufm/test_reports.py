"""The `ncinspect ufm` reports (`ufm.reports`): closed form against the numerical solution, the
collapse metrics of the numerical optima, and the sweeps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ncinspect.errors import UsageError
from ncinspect.metrics.results import jsonable
from ncinspect.ufm.inputs import zip_lambdas
from ncinspect.ufm.regress import make_targets
from ncinspect.ufm.reports import classify_report, regress_report, sweep_classify, sweep_regress
from tests.helpers.ufm_cases import CLASSIFY_TABLE, SOLVER_ACCURACY


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


def test_classify_report_needs_room_for_an_etf() -> None:
    with pytest.raises(UsageError, match=r"D = 2 with K = 5 classes; the closed form needs D >= "):
        classify_report(5, 2, 3, 0.01, 0.01)
    closed_only = classify_report(5, None, 3, 0.01, 0.01)
    assert "numerical" not in closed_only


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


# ------------------------------------------------------------------------------------------
# Sweeps


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
