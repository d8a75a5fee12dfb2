"""The certified decisions behind accuracy and NC4 (`stats.decisions`, driven by `ClassScatter`).

The argmax / argmin (float32 GEMMs, or pass 2's projection) certify a winner only when the bound
proves it and recompute the rest in float64: the predicted and nearest classes equal those of the
plain float64 computation row for row, near ties and exact ties included, on every route. Pass 2's
statistics equal the plain float64 ones (`reference_scatter`) to float64 rounding, and every
metric stays within 1e-6 of the naive oracle.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from ncinspect.analysis.arrays import analyze_arrays
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.stats.classification import ClassMoments, ClassScatter, plan_scatter
from tests.helpers.oracle_nc import classification_oracle

# --------------------------------------------------------------------------------------------
# certified argmax / argmin: equal to the plain float64 computation, row by row


def reference_scatter(plan, x: np.ndarray, y: np.ndarray) -> tuple:
    """The plain float64 pass 2 (without the certified fast paths): scatter, m2, pred, nearest."""
    x = np.asarray(x, dtype=np.float64)
    dev = x - plan.means[y]
    z = dev if plan.basis is None else dev @ plan.basis.T
    pred = np.argmax(x @ plan.weight.T + plan.bias, axis=1)
    idx = np.flatnonzero(plan.present)
    mu = plan.means[idx]
    dist = np.einsum("kd,kd->k", mu, mu)[None, :] - 2.0 * (x @ mu.T)
    ncc = idx[np.argmin(dist, axis=1)]
    within = np.bincount(y, weights=np.einsum("ij,ij->i", dev, dev), minlength=plan.means.shape[0])
    return z.T @ z, within, pred, ncc


def tie_heavy_data(
    seed: int, k: int, d: int, n: int, offset: float = 0.0, dtype: type = np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Classification data with exact and near ties (below float32 resolution).

    Logits: classes 0 and 1 have identical weights and biases (exact ties). Distances: a third
    of the rows sit on (or within 1e-9 / 3e-8 of) the bisector of two class means; each comes
    with its mirror image through its own class mean, so the class means do not move.
    """
    rng = np.random.default_rng(seed)
    m = n // 6
    base = n - 2 * m
    centres = rng.standard_normal((k, d)) + offset
    y = rng.integers(0, k, base)
    y[:k] = np.arange(k)
    x = centres[y] + 0.8 * rng.standard_normal((base, d))
    means = np.stack([x[y == c].mean(axis=0) for c in range(k)])
    a = rng.integers(0, k, m)
    b = (a + 1 + rng.integers(0, k - 1, m)) % k
    t = 0.5 + rng.choice([0.0, 1e-9, -1e-9, 3e-8], m)[:, None]
    on_bisector = means[a] * t + means[b] * (1 - t)
    mirror = 2 * means[a] - on_bisector
    x = np.concatenate([x, on_bisector, mirror])
    y = np.concatenate([y, a, a])
    w = rng.standard_normal((k, d))
    w[1] = w[0]
    bias = rng.standard_normal(k)
    bias[1] = bias[0]
    return x.astype(dtype), y, w, bias


TIE = 1e-11  # relative to the scores' scale: differences below this are float64 rounding


def exact_scores(plan, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Logits and squared distances to the present means in extended precision, and their scales."""
    h = np.asarray(x, np.longdouble)
    logits = h @ np.asarray(plan.weight, np.longdouble).T + np.asarray(plan.bias, np.longdouble)
    mu = np.asarray(plan.means[plan.present], np.longdouble)
    dist = (h**2).sum(axis=1)[:, None] - 2 * h @ mu.T + (mu**2).sum(axis=1)[None, :]
    norm = np.linalg.norm(np.asarray(x, np.float64), axis=1)
    logit_scale = norm * np.linalg.norm(plan.weight, axis=1).max() + np.abs(plan.bias).max()
    dist_scale = (norm + np.linalg.norm(plan.means, axis=1).max()) ** 2
    return logits, dist, logit_scale, dist_scale


def assert_same_or_tied(got: np.ndarray, ref: np.ndarray, score: np.ndarray, scale: np.ndarray):
    """Equal choices, except where the two candidates tie to float64 rounding (either is right)."""
    rows = np.flatnonzero(got != ref)
    gap = np.abs(score[rows, got[rows]] - score[rows, ref[rows]]).astype(np.float64)
    assert np.all(gap <= TIE * scale[rows]), (rows, gap / scale[rows])
    return rows.size


def rounding_ties(score: np.ndarray, scale: np.ndarray, best: str) -> int:
    """Rows whose best and runner-up scores differ by no more than float64 rounding."""
    ordered = np.sort(score if best == "min" else -score, axis=1)
    return int(np.count_nonzero((ordered[:, 1] - ordered[:, 0]).astype(float) <= TIE * scale))


def check_feature_choices(
    plan, x: np.ndarray, pred_ref: np.ndarray, ncc_ref: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The float32 feature routes' argmax and nearest mean equal the plain float64 choices up to
    rounding ties; returns (predictions, the extended-precision logits)."""
    logits, dist, logit_scale, dist_scale = exact_scores(plan, x)
    present = np.flatnonzero(plan.present)
    xnorm = np.linalg.norm(np.asarray(x, np.float64), axis=1) * (1 + 1e-9)
    pred = plan.logits.argmax(x, xnorm)
    ncc = plan.ncc.from_features(x, xnorm)
    assert_same_or_tied(pred, pred_ref, logits, logit_scale)
    assert_same_or_tied(
        np.searchsorted(present, ncc), np.searchsorted(present, ncc_ref), dist, dist_scale
    )
    return pred, logits


@pytest.mark.parametrize(("rows", "entries"), [(1, 1), (7, 21), (64, 200), (5000, 1 << 21)])
@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_feature_routes_in_tiles_equal_float64_whatever_the_tile(
    rows: int, entries: int, offset: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The float32 feature routes score (rows x classes) tiles and merge each row's best and
    runner-up across class blocks (`_Top2`): any tile, from 1 x 1 to all of it, gives the float64
    choices (exact ties to the lowest index, as the whole-row argmax)."""
    from ncinspect.stats import decisions

    monkeypatch.setattr(decisions, "_TILE_ROWS", rows)
    monkeypatch.setattr(decisions, "_TILE_ENTRIES", entries)
    k, d = 23, 8  # K > D: the D x D route, nearest means from the features
    x, y, w, b = tie_heavy_data(11, k, d, 600, offset)
    plan = plan_scatter(ClassMoments.from_batch(x, y, k), w, b, "dxd")
    _, _, pred_ref, ncc_ref = reference_scatter(plan, x, y)
    pred, logits = check_feature_choices(plan, x, pred_ref, ncc_ref)
    tied = np.flatnonzero(np.all(w[0] == w[1]) & (np.argmax(logits, axis=1) <= 1))
    assert not np.any(pred[tied] == 1)  # classes 0 and 1 tie exactly: the lowest index wins


@pytest.mark.parametrize(
    ("k", "d", "route"),
    [
        (6, 40, "class_span"),  # logits through the span (a random W: most rows fall back)
        (6, 10, "class_span"),  # 2 K_eff > D: no span route; W stacked under Mc (K_eff + K <= 32)
        (40, 64, "class_span"),  # neither: logits from the float32 GEMM
        (12, 8, "dxd"),  # K > D: nearest means from the float32 GEMM
        (6, 40, "dxd"),
    ],
)
@pytest.mark.parametrize("offset", [0.0, 50.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_certified_choices_equal_float64_up_to_rounding_ties(
    k: int, d: int, route: str, offset: float, dtype: type
) -> None:
    x, y, w, b = tie_heavy_data(k + d, k, d, 600, offset, dtype)
    moments = ClassMoments.from_batch(x, y, k)
    plan = plan_scatter(moments, w, b, route)
    scatter_ref, within_ref, pred_ref, ncc_ref = reference_scatter(plan, x, y)
    check_feature_choices(plan, x, pred_ref, ncc_ref)
    logits, dist, logit_scale, dist_scale = exact_scores(plan, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ClassScatter.from_batch(plan, x, y)
    ties = rounding_ties(logits, logit_scale, "max") + rounding_ties(dist, dist_scale, "min")
    assert abs(got.correct - int(np.count_nonzero(pred_ref == y))) <= ties
    assert abs(got.ncc_mismatch - int(np.count_nonzero(pred_ref != ncc_ref))) <= ties
    assert got.route == route
    np.testing.assert_allclose(got.scatter, scatter_ref, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(got.within, within_ref, rtol=1e-10)
    np.testing.assert_allclose(got.within, moments.m2, rtol=1e-10)


@pytest.mark.parametrize(("k", "d"), [(6, 40), (20, 64)])
@pytest.mark.parametrize("offset", [0.0, 50.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_span_logits_certify_most_rows_and_equal_float64(
    k: int, d: int, offset: float, dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A head in span(Mc) plus one common row: w_k = mu_k, b_k = -||mu_k||^2 / 2, so the logits'
    # argmax is the nearest mean and the data's near ties in distance (1e-9 relative, below
    # float32) are near ties in the logits; classes 0 and 1 tie exactly. The span route must
    # certify the clear rows, and leave the ties to the float32 / float64 routes.
    x, y, _, _ = tie_heavy_data(k + d, k, d, 600, offset, dtype)
    moments = ClassMoments.from_batch(x, y, k)
    w = moments.means.copy()
    b = -0.5 * np.einsum("kd,kd->k", w, w)
    w[1], b[1] = w[0], b[0]
    plan = plan_scatter(moments, w, b, "class_span")
    assert plan.logits.coef is not None
    assert plan.logits.resid < 1e-9 * np.linalg.norm(w, axis=1).max()
    fallback: list[int] = []
    logits_type = type(plan.logits)
    original = logits_type.argmax

    def counting(self, rows: np.ndarray, xnorm: np.ndarray) -> np.ndarray:
        fallback.append(rows.shape[0])
        return original(self, rows, xnorm)

    monkeypatch.setattr(logits_type, "argmax", counting)
    _, _, pred_ref, ncc_ref = reference_scatter(plan, x, y)
    logits, dist, logit_scale, dist_scale = exact_scores(plan, x)
    x64 = np.asarray(x, np.float64)
    dev = x64 - plan.means[y]
    assert plan.basis is not None
    dev_norm = np.linalg.norm(dev, axis=1)
    xnorm = dev_norm + plan.ncc.mean_norms[y]
    pred = plan.logits.from_span(dev @ plan.basis.T, y, dev_norm, xnorm, x.__getitem__)
    assert_same_or_tied(pred, pred_ref, logits, logit_scale)
    decided = np.sort(logits, axis=1)
    decided = (decided[:, -1] - decided[:, -2]).astype(float) > TIE * logit_scale
    np.testing.assert_array_equal(pred[decided], pred_ref[decided])
    assert 0 < sum(fallback) < 0.6 * x.shape[0]  # ties fall back; the rest is certified
    fallback.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ClassScatter.from_batch(plan, x, y)
    assert 0 < sum(fallback) < 0.6 * x.shape[0]
    ties = rounding_ties(logits, logit_scale, "max") + rounding_ties(dist, dist_scale, "min")
    assert abs(got.correct - int(np.count_nonzero(pred_ref == y))) <= ties
    assert abs(got.ncc_mismatch - int(np.count_nonzero(pred_ref != ncc_ref))) <= ties


def test_span_route_only_where_it_pays() -> None:
    # (K, r) float64 products per row must beat (K, D) float32 ones: 2 r <= D; and the O(D r^2)
    # least-squares setup must be small against the rows (rows x K >= _SPAN_SETUP x r^2).
    rng = np.random.default_rng(3)
    for k, d, n, expected in [(6, 40, 600, True), (6, 10, 600, False), (40, 64, 600, False)]:
        x = rng.standard_normal((n, d))
        y = np.arange(n) % k
        w = rng.standard_normal((k, d))
        plan = plan_scatter(ClassMoments.from_batch(x, y, k), w, np.zeros(k))
        assert (plan.logits.coef is not None) == expected, (k, d)
        assert plan.projector is not None and plan.projector_t is not None
        assert plan.projector_t.flags.c_contiguous
        np.testing.assert_array_equal(plan.projector_t, plan.projector.T)
        stacked = plan.projector.shape[0] == 2 * k
        assert stacked == (not expected and 2 * k <= 32), (k, d)
    few_rows = plan_scatter(
        ClassMoments.from_batch(rng.standard_normal((30, 90)), np.arange(30) % 30, 30),
        rng.standard_normal((30, 90)),
        np.zeros(30),
    )
    assert few_rows.logits.coef is None  # 30 rows x 30 classes < 20 x 30^2


def test_span_logits_bound_holds_against_extended_precision() -> None:
    # The scores the span route certifies lie within its slack of the exact logits (up to the
    # common v . h, which shifts every class alike): checked on the score differences.
    rng = np.random.default_rng(11)
    k, d = 12, 48
    x, y, _, _ = tie_heavy_data(7, k, d, 600, 20.0, np.float32)
    moments = ClassMoments.from_batch(x, y, k)
    mc = moments.means - moments.global_mean()
    w = 3.0 * mc + 0.05 * rng.standard_normal((k, d)) + rng.standard_normal(d)
    b = rng.standard_normal(k)
    plan = plan_scatter(moments, w, b, "class_span")
    lg = plan.logits
    assert lg.coef is not None and plan.basis is not None
    dev = np.asarray(x, np.float64) - plan.means[y]
    z = dev @ plan.basis.T
    scores = z @ lg.coef.T + lg.table[lg.table_rows(y)]
    exact, _, _, _ = exact_scores(plan, x)
    dev_norm = np.linalg.norm(dev, axis=1)
    # largest score error, after removing the common shift (taken from class 0)
    err = (scores - scores[:, :1]) - (exact - exact[:, :1]).astype(np.float64)
    bound = 2.0 * (lg.coef_scale * 1e-12 + lg.resid) * dev_norm * 1.01 + 1e-9 * (
        np.abs(exact).max(axis=1).astype(float) + 1.0
    )
    assert np.all(np.abs(err) <= bound[:, None])
    assert lg.resid > 0  # the residual really is there and is what the bound carries


def test_decided_rows_match_float64_exactly() -> None:
    # Away from rounding ties the choices are identical, near ties (1e-9 relative) included:
    # there the float32 bound cannot decide, and the float64 recomputation must.
    x, y, w, b = tie_heavy_data(3, 6, 40, 600, 0.0, np.float64)
    plan = plan_scatter(ClassMoments.from_batch(x, y, 6), w, b, "dxd")
    _, _, pred_ref, ncc_ref = reference_scatter(plan, x, y)
    _, dist, _, dist_scale = exact_scores(plan, x)
    ordered = np.sort(dist, axis=1)
    gap = (ordered[:, 1] - ordered[:, 0]).astype(float)
    near = (gap > TIE * dist_scale) & (gap < 1e-6 * dist_scale)  # float32 cannot resolve these
    assert near.sum() >= 20
    xnorm = np.linalg.norm(x, axis=1) * (1 + 1e-9)
    decided = gap > TIE * dist_scale
    np.testing.assert_array_equal(plan.ncc.from_features(x, xnorm)[decided], ncc_ref[decided])
    np.testing.assert_array_equal(plan.logits.argmax(x, xnorm), pred_ref)


def test_the_ties_really_are_ties() -> None:
    # the data above must exercise the fallback: exact ties exist in the logits and distances
    x, y, w, b = tie_heavy_data(1, 6, 40, 600, 0.0, np.float64)
    logits = x @ w.T + b
    assert np.any(logits[:, 0] == logits[:, 1])
    plan = plan_scatter(ClassMoments.from_batch(x, y, 6), w, b, "class_span")
    mu = plan.means
    dist = ((x[:, None, :] - mu[None]) ** 2).sum(axis=2)
    top2 = np.sort(dist, axis=1)[:, :2]
    assert np.mean(top2[:, 1] - top2[:, 0] < 1e-6 * top2[:, 0]) > 0.1


def test_huge_features_take_the_float64_route_without_warnings() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((80, 6)) * 1e30  # beyond float32 once squared: no float32 route
    y = np.arange(80) % 3
    w = rng.standard_normal((3, 6))
    moments = ClassMoments.from_batch(x, y, 3)
    for route in ("class_span", "dxd"):
        plan = plan_scatter(moments, w, np.zeros(3), route)
        _, _, pred_ref, ncc_ref = reference_scatter(plan, x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = ClassScatter.from_batch(plan, x, y)
        assert got.correct == int(np.count_nonzero(pred_ref == y))
        assert got.ncc_mismatch == int(np.count_nonzero(pred_ref != ncc_ref))


@pytest.mark.parametrize(("k", "d"), [(4, 30), (40, 64), (12, 8)])
def test_every_metric_within_1e_6_of_the_oracle_with_near_ties(k: int, d: int) -> None:
    x, y, w, b = tie_heavy_data(k * d, k, d, 500, 3.0)
    expected = classification_oracle(x, y, w, b)
    got = analyze_arrays(x, w, b, labels=y, options=AnalysisOptions(chunk_rows=97)).metrics
    for key, value in expected.metrics.items():
        assert math.isclose(got[key], value, rel_tol=1e-6, abs_tol=1e-12), key
