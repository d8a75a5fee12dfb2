"""Regression-collapse metrics (ncinspect.metrics.regression / ncinspect.stats.regression).

Expected values come from three places, never from ncinspect's own earlier output:
- the spec's UFM closed forms (Andriopoulos et al. 2024, Thm 4.1) and its T = 2 check values;
- `naive_regression` (`tests/helpers/oracle_regression.py`), written straight from
  docs/metrics.md: full N x D matrices, PCA by an SVD of the centred data, projectors built as
  pinv(W) W and V V^T, a per-sample loop over unit vectors, and nrc3 by brute force on a dense
  gamma grid with full T x T matrices;
- the spec's invariances (rotation, scaling, batch split and merge order).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import scipy.linalg

from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.passes import analyze_source
from ncinspect.errors import InputError, UsageError
from ncinspect.metrics import regression
from ncinspect.metrics.keys import REGRESSION_KEYS
from ncinspect.metrics.regression import GAMMA_GRID_POINTS, GammaChoice, nrc3_at, nrc3_search
from ncinspect.metrics.results import Result
from ncinspect.stats.regression import RegressionCentred, RegressionMoments
from tests.helpers.oracle_regression import (
    ORACLE_GRID,
    Oracle,
    naive_nrc3_curve,
    naive_regression,
    naive_sqrt,
)
from tests.helpers.synth import (
    random_frame,
    random_orthogonal,
    regression_source,
    targets_with_covariance,
)

KEYS = (
    "nrc1",
    "nrc2",
    "nrc1_centered",
    "nrc2_centered",
    "nrc3",
    "nrc3_gamma",
    "nrc3_gamma_ratio",
    "evr",
    "mse",
    "r2",
)
GAMMA_KEYS = ("nrc3_gamma", "nrc3_gamma_ratio")
NON_GAMMA_KEYS = tuple(k for k in KEYS if k not in GAMMA_KEYS)


def run(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    outputs: np.ndarray | None = None,
    **options: Any,
) -> Result:
    return analyze_source(regression_source(x, y, w, b, outputs), AnalysisOptions(**options))


def make_data(
    seed: int, n: int = 240, d: int = 7, t: int = 3, offset: float = 3.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Uncentred, correlated features (N, D), noisy linear targets (N, T), a head (W, b)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + offset * rng.normal(size=d)
    w_true = rng.normal(size=(t, d))
    b = rng.normal(size=t)
    y = x @ w_true.T + b + 0.5 * rng.normal(size=(n, t))
    w = w_true + 0.3 * rng.normal(size=(t, d))
    return x, y, w, b


def assert_close(
    actual: dict[str, float],
    expected: dict[str, float],
    keys: tuple[str, ...],
    rtol: float,
    atol: float = 1e-12,
) -> None:
    bad = [
        f"{k}: got {actual[k]!r}, expected {expected[k]!r}"
        for k in keys
        if not math.isclose(actual[k], expected[k], rel_tol=rtol, abs_tol=atol)
    ]
    assert not bad, "\n".join(bad)


def assert_nrc3_matches_oracle(r: Result, oracle: Oracle, w: np.ndarray) -> None:
    """The search is at least as good as a 200001-point grid, and no better than the truth.

    For f Lipschitz with constant L, the grid minimum exceeds the true minimum by at most L h / 2;
    max |f(g_i+1) - f(g_i)| estimates L h (f is steepest at gamma = 0, where sqrt(gamma) is, and
    that interval is on the grid), so [grid_min - max_step, grid_min] brackets the true minimum.
    """
    value, gamma = r.metrics["nrc3"], r.metrics["nrc3_gamma"]
    step = float(np.max(np.abs(np.diff(oracle.curve))))
    grid_min = oracle.metrics["nrc3"]
    assert grid_min - step - 1e-12 <= value <= grid_min + 1e-12
    assert 0.0 <= gamma <= oracle.lambda_min
    # The reported nrc3 is the naive formula evaluated at the reported gamma.
    at_gamma = naive_nrc3_curve(w, oracle.sigma, np.array([gamma]))[0]
    assert value == pytest.approx(at_gamma, rel=1e-9, abs=1e-12)
    assert r.metrics["nrc3_gamma_ratio"] == pytest.approx(gamma / oracle.lambda_min, rel=1e-9)
    assert r.info["lambda_min"] == pytest.approx(oracle.lambda_min, rel=1e-9)


# --------------------------------------------------------------------------------------------
# UFM closed forms


def ufm_optimum(
    rng: np.random.Generator, sigma: np.ndarray, lam_h: float, lam_w: float, d: int, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A global minimizer (H, Y, W, b) of the regression UFM for targets with covariance Sigma.

    W W^T = sqrt(lam_h/lam_w)(Sigma^1/2 - sqrt(c) I) in a random orthonormal frame; b = ybar;
    h_i = (W^T W + lam_h I)^{-1} W^T (y_i - b), the exact minimizer over h_i given (W, b).
    """
    t = sigma.shape[0]
    c = lam_h * lam_w
    y = targets_with_covariance(rng, n, sigma, mean=np.asarray(rng.normal(size=t)))
    ww = math.sqrt(lam_h / lam_w) * (np.real(scipy.linalg.sqrtm(sigma)) - math.sqrt(c) * np.eye(t))
    w = np.real(scipy.linalg.sqrtm(ww)) @ random_frame(rng, d, t).T
    b = y.mean(axis=0)
    h = np.linalg.solve(w.T @ w + lam_h * np.eye(d), w.T @ (y - b).T).T
    return h, y, w, b


UFM_CASES = [
    (np.diag([4.0, 1.0]), 0.1, 0.1, np.diag([1.9, 0.9]), 1e-12),
    (np.diag([4.0, 1.0]), 0.2, 0.05, np.diag([3.8, 1.8]), 1e-12),
    (
        np.array([[2.0, 1.0], [1.0, 2.0]]),
        0.2,
        0.2,
        np.array([[1.166, 0.366], [0.366, 1.166]]),
        6e-4,
    ),
]


@pytest.mark.parametrize(("sigma", "lam_h", "lam_w", "check", "atol"), UFM_CASES)
def test_ufm_global_minimum_is_fully_collapsed(
    sigma: np.ndarray, lam_h: float, lam_w: float, check: np.ndarray, atol: float
) -> None:
    rng = np.random.default_rng(11)
    d, n = 6, 150
    c = lam_h * lam_w
    h, y, w, b = ufm_optimum(rng, sigma, lam_h, lam_w, d, n)
    # The construction: targets with covariance exactly Sigma, W W^T = the spec's check value.
    y_c = y - y.mean(axis=0)
    np.testing.assert_allclose(y_c.T @ y_c / n, sigma, atol=1e-12)
    np.testing.assert_allclose(w @ w.T, check, atol=atol)
    # ... and a stationary point of the UFM loss (1/2N)||WH + b1^T - Y||^2 + (lH/2N)||H||^2 +
    # (lW/2)||W||^2 in W, H and b (rows of h are the columns of the spec's H).
    resid = h @ w.T + b - y
    np.testing.assert_allclose(resid.T @ h / n + lam_w * w, 0.0, atol=1e-12)
    np.testing.assert_allclose(resid @ w + lam_h * h, 0.0, atol=1e-12)
    np.testing.assert_allclose(resid.mean(axis=0), 0.0, atol=1e-12)
    # Residual covariance c I (the spec's last closed-form property).
    np.testing.assert_allclose(resid.T @ resid / n, c * np.eye(2), atol=1e-12)

    r = run(h, y, w, b)
    for key in ("nrc1", "nrc2", "nrc1_centered", "nrc2_centered"):
        assert r.metrics[key] == pytest.approx(0.0, abs=1e-9), key
    assert nrc3_at(w, sigma, c) == pytest.approx(0.0, abs=1e-9)
    assert r.metrics["nrc3"] == pytest.approx(0.0, abs=1e-9)
    assert r.metrics["nrc3_gamma"] == pytest.approx(c, rel=1e-6)
    assert r.metrics["nrc3_gamma_ratio"] == pytest.approx(c / 1.0, rel=1e-6)  # lambda_min = 1
    assert r.info["lambda_min"] == pytest.approx(1.0, rel=1e-12)
    assert r.info["nrc3_gamma_source"] == "searched"
    assert r.info["nrc3_gamma_on_endpoint"] is False
    assert r.metrics["evr"] == pytest.approx(1.0, abs=1e-12)  # features span T dimensions
    assert r.metrics["mse"] == pytest.approx(c, rel=1e-9)  # tr(c I) / T
    # Given the UFM lambdas, gamma = lambda_H lambda_W, no search.
    r_ufm = run(h, y, w, b, ufm_lambdas=(lam_h, lam_w))
    assert r_ufm.info["nrc3_gamma_source"] == "ufm_lambdas"
    assert r_ufm.metrics["nrc3_gamma"] == pytest.approx(c, rel=1e-15)
    assert r_ufm.metrics["nrc3"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(("sigma", "lam_h", "lam_w", "check", "atol"), UFM_CASES)
def test_weights_off_the_ufm_form_have_positive_nrc3(
    sigma: np.ndarray, lam_h: float, lam_w: float, check: np.ndarray, atol: float
) -> None:
    rng = np.random.default_rng(5)
    frame = random_frame(rng, 6, 2)
    # The check value rotated by 90 degrees swaps which eigenvector carries the larger eigenvalue;
    # diag(1, 2) puts the larger one on Sigma's smaller direction (diagonal Sigma) or is not
    # aligned with Sigma's eigenvectors at all. No gamma in [0, lambda_min] reaches either.
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])
    for ww in (rot @ check @ rot.T, np.diag([1.0, 2.0])):
        w = np.real(scipy.linalg.sqrtm(ww)) @ frame.T
        gamma, value, _ = nrc3_search(w, sigma)
        dense = naive_nrc3_curve(w, sigma, np.linspace(0, 1.0, 20001))
        assert value > 1e-3
        assert value == pytest.approx(dense.min(), abs=1e-6)
        assert nrc3_at(w, sigma, lam_h * lam_w) > 1e-3


@pytest.mark.parametrize("t", [2, 3, 5])
def test_nrc3_gamma_is_found_to_rounding(t: int) -> None:
    """W W^T = a (Sigma^1/2 - sqrt(c) I) (the UFM's form, any scale a): the minimizer is c, and
    the search returns it to 1e-12 relative, not to the ~1e-8 that minimizing by function values
    alone gives (nrc3 is flat at its minimum, nrc3(c + e) - nrc3(c) ~ e^2)."""
    rng = np.random.default_rng(40 + t)
    basis = np.linalg.qr(rng.standard_normal((t, t)))[0]
    for trial in range(5):
        lams = np.sort(rng.uniform(0.5, 4.0, t))[::-1]
        sigma = basis @ np.diag(lams) @ basis.T
        c = float(rng.uniform(0.05, 0.95)) * lams[-1]
        target = basis @ np.diag(np.sqrt(lams) - np.sqrt(c)) @ basis.T
        w = np.real(scipy.linalg.sqrtm(target)) @ random_frame(rng, 7, t).T * rng.uniform(0.1, 9)
        gamma, value, on_endpoint = nrc3_search(w, sigma)
        assert gamma == pytest.approx(c, rel=1e-12), (trial, gamma, c)
        assert value == pytest.approx(0.0, abs=1e-14) and not on_endpoint
    # Off the UFM form (nrc3 > 0 at its minimum): the naive T x T curve is no lower on a fine
    # grid around the reported gamma, and its central difference there vanishes.
    sigma = basis @ np.diag(np.linspace(3.0, 1.0, t)) @ basis.T
    noise = rng.standard_normal((t, t)) * 0.05
    target = naive_sqrt(sigma) - np.sqrt(0.5) * np.eye(t) + noise @ noise.T
    w = np.real(scipy.linalg.sqrtm(target)) @ random_frame(rng, 7, t).T
    gamma, value, on_endpoint = nrc3_search(w, sigma)
    assert not on_endpoint and value > 1e-6
    near = gamma + np.linspace(-1e-4, 1e-4, 2001)
    assert value <= naive_nrc3_curve(w, sigma, near).min() + 1e-14
    h = 1e-6
    left, right = naive_nrc3_curve(w, sigma, np.array([gamma - h, gamma + h]))
    assert abs(right - left) / (2 * h) < 1e-6


def test_exact_square_root_weights_put_gamma_on_the_endpoint() -> None:
    # W W^T = Sigma^1/2 exactly: nrc3(0) = 0 and the minimizer is the endpoint gamma = 0.
    rng = np.random.default_rng(2)
    sigma = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.2], [0.0, 0.2, 1.0]])
    y = targets_with_covariance(rng, 90, sigma, mean=np.zeros(3))
    w = np.real(scipy.linalg.sqrtm(np.real(scipy.linalg.sqrtm(sigma)))) @ random_frame(rng, 5, 3).T
    x = rng.normal(size=(90, 5))
    r = run(x, y, w)
    assert r.metrics["nrc3"] == pytest.approx(0.0, abs=1e-12)
    assert r.metrics["nrc3_gamma"] == 0.0
    assert r.info["nrc3_gamma_on_endpoint"] is True
    assert any("endpoint" in msg for msg in r.warnings)


# --------------------------------------------------------------------------------------------
# every metric against the naive oracle


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("chunk_rows", [None, 17])
@pytest.mark.parametrize(("d", "t"), [(7, 3), (4, 4), (9, 2), (80, 3)])  # 80: partial eigh
def test_every_metric_matches_oracle(d: int, t: int, chunk_rows: int | None, bias: bool) -> None:
    x, y, w, b = make_data(100 * d + t, d=d, t=t)
    bb = b if bias else None
    oracle = naive_regression(x, y, w, bb)
    r = run(x, y, w, bb, chunk_rows=chunk_rows)
    # the per-component keys evr_j and nrc1_at_k: tests/metrics/test_geometry.py
    assert tuple(r.metrics) == REGRESSION_KEYS and REGRESSION_KEYS[: len(KEYS)] == KEYS
    for key in KEYS:
        assert math.isfinite(oracle.metrics[key]), key
    if t == d:  # P_pca = P_W = I: every unit distance is 0
        assert oracle.metrics["nrc1"] == pytest.approx(0.0, abs=1e-12)
    else:  # uncentred and centred really differ on this data, so the test can tell them apart
        assert abs(oracle.metrics["nrc1"] - oracle.metrics["nrc1_centered"]) > 1e-3
        assert abs(oracle.metrics["nrc2"] - oracle.metrics["nrc2_centered"]) > 1e-3
    assert_close(r.metrics, oracle.metrics, tuple(k for k in NON_GAMMA_KEYS if k != "nrc3"), 1e-6)
    assert_nrc3_matches_oracle(r, oracle, w)
    assert r.info["predictions"] == "W h + b"
    assert ("bias" in r.info) is (not bias)
    assert r.n == x.shape[0]


def test_interior_nrc3_minimum_matches_oracle() -> None:
    # W W^T near Sigma^1/2 - sqrt(c) I with c inside (0, lambda_min): an interior minimum.
    rng = np.random.default_rng(9)
    sigma = np.array([[5.0, 1.0, 0.5], [1.0, 3.0, 0.3], [0.5, 0.3, 2.0]])
    n, d = 200, 6
    y = targets_with_covariance(rng, n, sigma, mean=rng.normal(size=3))
    c = 0.4 * float(np.linalg.eigvalsh(sigma).min())
    ww = naive_sqrt(sigma) - math.sqrt(c) * np.eye(3)
    noise = 0.02 * rng.normal(size=(3, 3))
    w = np.real(scipy.linalg.sqrtm(ww + noise @ noise.T)) @ random_frame(rng, d, 3).T
    x = rng.normal(size=(n, d)) + 1.0
    oracle = naive_regression(x, y, w, None)
    i = int(np.argmin(oracle.curve))
    assert 0 < i < ORACLE_GRID - 1  # the oracle sees an interior minimum too
    r = run(x, y, w)
    assert r.info["nrc3_gamma_on_endpoint"] is False
    assert not any("endpoint" in msg for msg in r.warnings)
    assert_nrc3_matches_oracle(r, oracle, w)
    # Interior: gamma agrees with the oracle's to within a few oracle grid steps.
    h = oracle.lambda_min / (ORACLE_GRID - 1)
    assert abs(r.metrics["nrc3_gamma"] - oracle.metrics["nrc3_gamma"]) < 50 * h
    # A searched value is the minimum: no grid point does better.
    assert r.metrics["nrc3"] <= oracle.curve.min() + 1e-12


def test_stored_outputs_are_the_predictions() -> None:
    x, y, w, b = make_data(3)
    outputs = y + np.random.default_rng(1).normal(size=y.shape) * 0.7
    oracle = naive_regression(x, y, w, b, outputs=outputs)
    plain = naive_regression(x, y, w, b)
    assert abs(oracle.metrics["mse"] - plain.metrics["mse"]) > 1e-3  # the test can tell
    r = run(x, y, w, b, outputs=outputs)
    assert_close(r.metrics, oracle.metrics, ("mse", "r2"), 1e-9)
    assert r.info["predictions"] == "outputs"


def test_float32_features_match_oracle() -> None:
    x, y, w, b = make_data(4)
    x32 = x.astype(np.float32)
    oracle = naive_regression(x32.astype(np.float64), y, w, b)
    r = run(x32, y, w, b)
    assert_close(r.metrics, oracle.metrics, tuple(k for k in NON_GAMMA_KEYS if k != "nrc3"), 1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.05, 0.37])
def test_given_gamma_is_used_as_is(gamma: float) -> None:
    x, y, w, b = make_data(8)
    oracle = naive_regression(x, y, w, b)
    r = run(x, y, w, b, gamma=gamma)
    expected = naive_nrc3_curve(w, oracle.sigma, np.array([gamma]))[0]
    assert r.metrics["nrc3"] == pytest.approx(expected, rel=1e-9)
    assert r.metrics["nrc3_gamma"] == gamma
    assert r.metrics["nrc3_gamma_ratio"] == pytest.approx(gamma / oracle.lambda_min, rel=1e-9)
    assert r.info["nrc3_gamma_source"] == "given"
    assert nrc3_at(w, oracle.sigma, gamma) == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------------------------
# invariances


def test_rotating_features_and_weights_changes_nothing() -> None:
    x, y, w, b = make_data(21)
    base = run(x, y, w, b)
    for seed in range(3):
        q = random_orthogonal(np.random.default_rng(seed), x.shape[1])
        rotated = run(x @ q.T, y, w @ q.T, b)  # h -> Q h, W -> W Q^T
        assert_close(rotated.metrics, base.metrics, NON_GAMMA_KEYS, 1e-8, atol=1e-10)
        assert_close(rotated.metrics, base.metrics, GAMMA_KEYS, 1e-6)


@pytest.mark.parametrize("c", [1e-3, 0.5, 40.0])
def test_scaling_features_or_weights_changes_no_normalized_metric(c: float) -> None:
    x, y, w, b = make_data(22)
    base = run(x, y, w, b)
    normalized = ("nrc1", "nrc2", "nrc1_centered", "nrc2_centered", "nrc3", "evr")
    scaled_x = run(c * x, y, w, b)
    assert_close(scaled_x.metrics, base.metrics, normalized, 1e-8, atol=1e-10)
    assert_close(scaled_x.metrics, base.metrics, GAMMA_KEYS, 1e-6)
    assert not math.isclose(scaled_x.metrics["mse"], base.metrics["mse"], rel_tol=1e-3)
    scaled_w = run(x, y, c * w, b)
    assert_close(scaled_w.metrics, base.metrics, ("nrc2", "nrc2_centered", "nrc3"), 1e-8, 1e-10)
    assert_close(scaled_w.metrics, base.metrics, GAMMA_KEYS, 1e-6)


def test_row_order_and_chunk_size_do_not_change_results() -> None:
    x, y, w, b = make_data(23, n=101)
    one_shot = run(x, y, w, b)
    perm = np.random.default_rng(0).permutation(x.shape[0])
    for r in (
        *(run(x, y, w, b, chunk_rows=rows) for rows in (1, 2, 13, 100, 101, 500)),
        run(x[perm], y[perm], w, b, chunk_rows=10),
    ):
        assert_close(r.metrics, one_shot.metrics, NON_GAMMA_KEYS, 1e-10, atol=1e-13)
        assert_close(r.metrics, one_shot.metrics, GAMMA_KEYS, 1e-6)


def _splits(rng: np.random.Generator, n: int, parts: int) -> list[slice]:
    cuts = np.sort(rng.choice(np.arange(n + 1), size=parts - 1, replace=True))  # may repeat: empty
    edges = [0, *cuts.tolist(), n]
    return [slice(a, c) for a, c in zip(edges[:-1], edges[1:], strict=True)]


def _assert_moments_equal(a: RegressionMoments, e: RegressionMoments) -> None:
    assert a.n == e.n and a.n_zero_norm == e.n_zero_norm
    for name in ("feature_mean", "feature_scatter", "unit_second", "target_mean", "target_scatter"):
        ea = getattr(e, name)
        np.testing.assert_allclose(
            getattr(a, name), ea, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(ea).max()), err_msg=name
        )
    assert a.rss == pytest.approx(e.rss, rel=1e-12)


def test_partial_statistics_merged_in_any_order_equal_one_pass() -> None:
    x, y, w, b = make_data(24, n=97)
    x[[5, 40]] = 0.0  # zero-norm rows are counted in whichever part holds them
    yhat = x @ w.T + b
    whole = RegressionMoments.from_batch(x, y, yhat)
    whole_c = RegressionCentred.from_batch(x, whole.feature_mean)
    rng = np.random.default_rng(3)
    for _ in range(8):
        parts = _splits(rng, x.shape[0], int(rng.integers(2, 9)))
        order = rng.permutation(len(parts))
        pieces = [
            RegressionMoments.from_batch(x[parts[i]], y[parts[i]], yhat[parts[i]]) for i in order
        ]
        folded = RegressionMoments.empty(x.shape[1], y.shape[1])
        for p in pieces:
            folded = folded.merge(p)
        _assert_moments_equal(folded, whole)
        level = pieces
        while len(level) > 1:  # a pairwise tree
            paired = [level[i].merge(level[i + 1]) for i in range(0, len(level) - 1, 2)]
            level = paired + ([level[-1]] if len(level) % 2 else [])
        _assert_moments_equal(level[0], whole)
        centred = RegressionCentred.empty(x.shape[1])
        for i in order:
            centred = centred.merge(RegressionCentred.from_batch(x[parts[i]], whole.feature_mean))
        assert centred.n == whole_c.n and centred.n_zero_norm == whole_c.n_zero_norm == 0
        np.testing.assert_allclose(centred.unit_second, whole_c.unit_second, rtol=1e-10, atol=1e-12)
    assert whole.n_zero_norm == 2


def test_moments_are_the_naive_sums() -> None:
    x, y, w, b = make_data(25, n=60)
    yhat = x @ w.T + b
    m = RegressionMoments.from_batch(x[:20], y[:20], yhat[:20]).merge(
        RegressionMoments.from_batch(x[20:], y[20:], yhat[20:])
    )
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    hn = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(m.feature_mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(m.feature_scatter, xc.T @ xc, rtol=1e-10)
    np.testing.assert_allclose(m.unit_second, hn.T @ hn, rtol=1e-10)
    np.testing.assert_allclose(m.target_scatter, yc.T @ yc, rtol=1e-10)
    np.testing.assert_allclose(m.target_cov(), yc.T @ yc / 60, rtol=1e-10)
    assert m.rss == pytest.approx(float(np.sum((y - yhat) ** 2)), rel=1e-12)


# --------------------------------------------------------------------------------------------
# edge cases


def test_single_target_gives_nan_nrc3_with_reason() -> None:
    x, y, w, b = make_data(31, t=1)
    r = run(x, y, w, b)
    oracle = naive_regression(x, y, w, b)
    for key in ("nrc3", "nrc3_gamma", "nrc3_gamma_ratio"):
        assert math.isnan(r.metrics[key])
        assert "T = 1" in r.info["undefined"][key]
    assert any("nrc3 is undefined" in msg for msg in r.warnings)
    assert_close(
        r.metrics, oracle.metrics, ("nrc1", "nrc2", "nrc1_centered", "evr", "mse", "r2"), 1e-6
    )
    # Even a given gamma cannot define it.
    assert math.isnan(run(x, y, w, b, gamma=0.1).metrics["nrc3"])


def test_zero_norm_rows_are_excluded_and_counted() -> None:
    x, y, w, b = make_data(32)
    rows = [0, 17, 18, 100, 239]
    x[rows] = 0.0
    r = run(x, y, w, b, chunk_rows=50)
    oracle = naive_regression(x, y, w, b)  # skips zero rows; PCA, mse, r2 use every row
    assert_close(r.metrics, oracle.metrics, tuple(k for k in NON_GAMMA_KEYS if k != "nrc3"), 1e-6)
    assert r.info["zero_norm_rows"] == len(rows)
    assert r.info["centred_zero_norm_rows"] == 0
    assert any(f"{len(rows)} feature row(s) have zero norm" in msg for msg in r.warnings)
    assert r.n == x.shape[0]


def test_all_zero_features_leave_the_unit_metrics_undefined_once() -> None:
    x, y, w, b = make_data(37)
    r = run(np.zeros_like(x), y, w, b)
    for key in ("nrc1", "nrc2", "nrc1_centered", "nrc2_centered", "evr"):
        assert math.isnan(r.metrics[key]), key
    assert "zero variance" in r.info["undefined"]["nrc1"]
    assert "zero norm" in r.info["undefined"]["nrc2"]
    assert sum(msg.startswith("nrc1 is undefined") for msg in r.warnings) == 1
    assert r.info["zero_norm_rows"] == x.shape[0]
    assert math.isfinite(r.metrics["nrc3"])  # W and Sigma alone define nrc3
    assert r.metrics["mse"] == pytest.approx(float(np.mean((y - b) ** 2)), rel=1e-12)


def test_a_zero_head_has_nrc2_one_and_undefined_nrc3() -> None:
    x, y, w, b = make_data(38)
    r = run(x, y, np.zeros_like(w), b)
    assert r.metrics["nrc2"] == 1.0 and r.metrics["nrc2_centered"] == 1.0
    assert math.isnan(r.metrics["nrc3"])
    assert "W is zero" in r.info["undefined"]["nrc3"]


def test_the_gamma_grid_is_at_least_1000_points() -> None:
    assert GAMMA_GRID_POINTS >= 1000  # the spec's minimum before refinement


def test_a_row_equal_to_the_mean_is_excluded_from_the_centred_metrics() -> None:
    # Integer data symmetric about m, plus the row m itself: the mean is exactly m.
    rng = np.random.default_rng(33)
    m = np.array([3.0, -2.0, 5.0, 1.0])
    v = rng.integers(-4, 5, size=(6, 4)).astype(np.float64)
    x = np.vstack([m + v, m - v, m[None]])
    w = rng.normal(size=(2, 4))
    y = x @ w.T + rng.normal(size=(13, 2))
    r = run(x, y, w)
    oracle = naive_regression(x, y, w, None)  # its centred loop skips the zero row itself
    assert r.info["centred_zero_norm_rows"] == 1
    assert r.info["zero_norm_rows"] == 0
    assert any("equal the global mean" in msg for msg in r.warnings)
    assert_close(r.metrics, oracle.metrics, ("nrc1_centered", "nrc2_centered"), 1e-6)


def test_singular_target_covariance_warns_and_searches_at_zero() -> None:
    x, y, w, b = make_data(34)
    y[:, 2] = y[:, 0] - 2.0 * y[:, 1]  # rank-2 targets, T = 3
    r = run(x, y, w, b)
    assert any("singular" in msg for msg in r.warnings)
    assert r.info["sigma_singular"] is True
    assert abs(r.metrics["nrc3_gamma"]) <= 1e-12 * r.info["lambda_max"]
    assert math.isnan(r.metrics["nrc3_gamma_ratio"])
    assert "singular" in r.info["undefined"]["nrc3_gamma_ratio"]
    sigma = np.cov(y.T, bias=True)
    expected = naive_nrc3_curve(w, sigma, np.array([0.0]))[0]
    assert r.metrics["nrc3"] == pytest.approx(expected, rel=1e-6)


def test_nonfinite_targets_are_refused() -> None:
    x, y, w, b = make_data(35)
    y[3, 1] = np.nan
    with pytest.raises(InputError, match="'targets' has 1 row"):
        run(x, y, w, b)


def test_gamma_choice_validates() -> None:
    with pytest.raises(ValueError, match="gamma source"):
        GammaChoice(0.1, "guessed")
    x, y, w, b = make_data(36)
    with pytest.raises(UsageError, match="alternatives"):
        run(x, y, w, b, gamma=0.1, ufm_lambdas=(0.1, 0.1))


# --------------------------------------------------------------------------------------------
# subspaces: the top eigenpairs (PCA basis) and their reuse


@pytest.mark.parametrize(("d", "m"), [(64, 4), (200, 6), (64, 17), (10, 3)])
def test_top_eigenpairs_equal_a_full_decomposition(d: int, m: int) -> None:
    rng = np.random.default_rng(d + m)
    a = rng.normal(size=(3 * d, d)) * np.linspace(3.0, 0.1, d)
    cov = a.T @ a / (3 * d)
    full_vals, full_vecs = np.linalg.eigh(cov)
    full_vals, full_vecs = full_vals[::-1][:m], full_vecs[:, ::-1][:, :m]
    vals, vecs = regression._top_eigh(cov, m)
    np.testing.assert_allclose(vals, full_vals, rtol=1e-12)
    overlap = np.abs(np.sum(vecs * full_vecs, axis=0))  # same directions, up to sign
    np.testing.assert_allclose(overlap, 1.0, atol=1e-10)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(m), atol=1e-12)


def test_subspaces_are_reused_only_for_the_same_moments_and_weight() -> None:
    from ncinspect.metrics.regression import Subspaces

    rng = np.random.default_rng(14)
    x = rng.standard_normal((300, 9)) @ rng.standard_normal((9, 9))
    y = rng.standard_normal((300, 2))
    w = rng.standard_normal((2, 9))
    moments = RegressionMoments.from_batch(x, y, y, unit_rows=False)
    first = Subspaces.of(moments, w)
    assert Subspaces.of(moments, w) is first  # the analysis's second request: no new eigh
    changed = w.copy()
    changed[0] += 1.0
    other = Subspaces.of(moments, changed)
    assert other is not first
    assert not np.allclose(np.abs(other.row_space.T @ first.row_space), np.eye(2))
    third = Subspaces.of(moments, w)
    w[1] *= -3.0  # the caller's W changed in place after the call: not mistaken for the old one
    assert Subspaces.of(moments, w) is not third
    merged = moments.merge(RegressionMoments.empty(9, 2))  # equal statistics, another object
    again = Subspaces.of(merged, w)
    assert again is not first
    np.testing.assert_allclose(again.eigenvalues, first.eigenvalues, rtol=1e-12)
