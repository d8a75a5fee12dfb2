"""`ncinspect ufm`: the CLI prints the closed forms and the solver's agreement with them."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ncinspect.cli import app

runner = CliRunner()


def test_classify_json_matches_spec_check_values() -> None:
    args = ["ufm", "classify", "--classes", "4", "--dim", "6", "--per-class", "5"]
    args += ["--lambda-w", "0.01", "--lambda-h", "0.01", "--alpha", "0,0.1", "-f", "json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.stderr
    ce, ls = json.loads(res.stdout)
    # Spec check values (K = 4, n = 5, lambda = 0.01): margins 3.7310 and 2.8967.
    assert ce["closed_form"]["margin"] == pytest.approx(3.7310, abs=1e-4)
    assert ls["closed_form"]["margin"] == pytest.approx(2.8967, abs=1e-4)
    for rep in (ce, ls):
        for key in ("q", "p", "margin", "w_norm_sq", "h_norm_sq", "condition_number"):
            assert rep["numerical"][key] == pytest.approx(rep["closed_form"][key], abs=1e-4)
        assert rep["numerical"]["metrics"]["nc1"] < 1e-8
    assert ls["closed_form"]["condition_number"] < ce["closed_form"]["condition_number"]


def test_regress_no_regularization_does_not_collapse() -> None:
    args = ["ufm", "regress", "--dim", "8", "--targets-cov", "[[4,0],[0,1]]"]
    res = runner.invoke(app, [*args, "--lambda-h", "0", "--lambda-w", "0", "-f", "json"])
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["closed_form"]["regime"] == "no_regularization"
    assert rep["numerical"]["metrics"]["nrc2"] > 0.05
    res = runner.invoke(app, [*args, "--lambda-h", "0.1", "--lambda-w", "0.1", "-f", "json"])
    rep = json.loads(res.stdout)
    wwt = [x for row in rep["closed_form"]["wwt"] for x in row]
    assert wwt == pytest.approx([1.9, 0.0, 0.0, 0.9])
    assert rep["numerical"]["metrics"]["nrc2"] < 1e-8


def test_bad_matrix_is_a_usage_error() -> None:
    args = ["ufm", "regress", "--dim", "4", "--targets-cov", "[[1,2],[3]]"]
    res = runner.invoke(app, [*args, "--lambda-h", "0.1", "--lambda-w", "0.1"])
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "--targets-cov" in res.stderr
