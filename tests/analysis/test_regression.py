"""The regression passes (`analysis.regression`): the streamed analysis equals the metrics of the
plain D x D statistics, and the run-level gamma protocol (`apply_run_gamma`) holds the final
checkpoint's gamma for the earlier ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.linalg

from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.passes import analyze_source
from ncinspect.analysis.regression import apply_run_gamma
from ncinspect.io.sources import ArraySource
from ncinspect.metrics.head import Head
from ncinspect.metrics.results import Result
from ncinspect.stats.regression import RegressionCentred, RegressionMoments
from tests.helpers.oracle_regression import naive_nrc3_curve, naive_sqrt
from tests.helpers.synth import random_frame, regression_source, targets_with_covariance


def test_regression_analysis_equals_the_dxd_form() -> None:
    from ncinspect.metrics.regression import regression_metrics

    rng = np.random.default_rng(12)
    n, d, t = 700, 70, 3
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / 8 + rng.standard_normal(d)
    w = rng.standard_normal((t, d))
    y = x @ w.T + rng.standard_normal((n, t))
    source = ArraySource(
        path="<t>",
        task="regression",
        n=n,
        d=d,
        head=Head(w, None),
        has_outputs=False,
        features=x.astype(np.float32),
        targets=y,
    )
    got = analyze_source(source, AnalysisOptions(chunk_rows=256)).metrics
    x32 = x.astype(np.float32).astype(np.float64)
    moments = RegressionMoments.from_batch(x32, y, x32 @ w.T)
    centred = RegressionCentred.from_batch(x32, moments.feature_mean)
    want = regression_metrics(moments, centred, Head(w, None)).metrics
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-13), key


# --------------------------------------------------------------------------------------------
# the run-level gamma protocol


def _checkpoints(**options: Any) -> tuple[list[Result], np.ndarray, list[np.ndarray]]:
    """Three checkpoints of one run whose W moves towards the UFM form; fixed data."""
    rng = np.random.default_rng(41)
    sigma = np.array([[4.0, 0.8, 0.2], [0.8, 2.5, 0.1], [0.2, 0.1, 1.5]])
    n, d = 120, 6
    y = targets_with_covariance(rng, n, sigma, mean=np.ones(3))
    x = rng.normal(size=(n, d))
    frame = random_frame(rng, d, 3)
    target = np.real(scipy.linalg.sqrtm(naive_sqrt(sigma) - 0.5 * np.eye(3))) @ frame.T
    start = rng.normal(size=(3, d))
    weights, results = [], []
    for epoch, a in ((1, 0.2), (2, 0.6), (3, 0.95)):
        w = (1 - a) * start + a * target
        meta = {"run": "r", "checkpoint": f"ep{epoch}", "epoch": epoch}
        src = regression_source(x, y, w, None, meta=meta)
        results.append(analyze_source(src, AnalysisOptions(**options)))
        weights.append(w)
    return results, sigma, weights


def test_final_checkpoint_gamma_is_held_fixed_for_earlier_checkpoints() -> None:
    results, sigma, weights = _checkpoints()
    before = [(dict(r.metrics), dict(r.info)) for r in results]
    g = results[-1].metrics["nrc3_gamma"]
    lam_min = float(np.linalg.eigvalsh(sigma).min())
    assert results[0].metrics["nrc3_gamma"] != pytest.approx(g, rel=1e-3)  # the test can tell
    apply_run_gamma(results)
    assert results[-1].metrics == before[-1][0]
    assert results[-1].info["nrc3_gamma_source"] == "searched"
    for r, w, (old_metrics, _) in zip(results[:-1], weights[:-1], before[:-1], strict=True):
        expected = naive_nrc3_curve(w, sigma, np.array([g]))[0]
        assert r.metrics["nrc3"] == pytest.approx(expected, rel=1e-9)
        assert r.metrics["nrc3"] >= old_metrics["nrc3"] - 1e-12  # own search was the minimum
        assert r.metrics["nrc3_gamma"] == g
        assert r.metrics["nrc3_gamma_ratio"] == pytest.approx(g / lam_min, rel=1e-9)
        assert r.info["nrc3_gamma_source"] == "final_checkpoint"
        assert r.info["nrc3_gamma_from"] == "ep3"
        assert r.info["nrc3_own_search"]["nrc3_gamma"] == old_metrics["nrc3_gamma"]
        for key in ("nrc1", "nrc2", "evr", "mse", "r2"):
            assert r.metrics[key] == old_metrics[key]


@pytest.mark.parametrize(
    "options", [{"gamma": 0.3}, {"ufm_lambdas": (0.5, 0.4)}], ids=["given", "ufm"]
)
def test_run_gamma_is_a_no_op_for_fixed_gammas(options: dict[str, Any]) -> None:
    results, sigma, weights = _checkpoints(**options)
    g = 0.3 if "gamma" in options else 0.2
    before = [dict(r.metrics) for r in results]
    apply_run_gamma(results)
    for r, w, old in zip(results, weights, before, strict=True):
        assert r.metrics == old
        assert r.metrics["nrc3_gamma"] == pytest.approx(g, rel=1e-15)
        assert r.metrics["nrc3"] == pytest.approx(naive_nrc3_curve(w, sigma, np.array([g]))[0])
        assert r.info["nrc3_gamma_source"] == ("given" if "gamma" in options else "ufm_lambdas")


def test_run_gamma_is_a_no_op_for_a_single_checkpoint() -> None:
    results, _, _ = _checkpoints()
    first = results[0]
    old = dict(first.metrics)
    apply_run_gamma([first])
    assert first.metrics == old
    assert first.info["nrc3_gamma_source"] == "searched"
