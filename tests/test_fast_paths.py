"""The report path's fast routes change no answer (issue #7).

- `dot_error_bound` bounds every float32 / float64 dot product, cancellation included.
- The argmax / argmin behind accuracy and NC4 (float32 GEMMs, or pass 2's projection) certify a
  winner only when the bound proves it, and recompute the rest in float64: the predicted and
  nearest classes equal those of the plain float64 computation row for row, near ties and exact
  ties included, on every route.
- Pass 2's statistics equal the plain float64 ones (`reference_scatter`, the previous code) to
  float64 rounding, and every metric stays within 1e-6 of the naive oracle.
- Pass 1 without m2 (`ClassSums`), projections instead of D x D unit moments (`UnitProjections`)
  and the finite-row check done once give the same results as the straightforward forms.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
from oracle_nc import classification_oracle

import ncinspect.stats.blocks as st
from ncinspect.analysis.arrays import analyze_arrays
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.passes import analyze_source
from ncinspect.errors import InputError
from ncinspect.io.sources import ArraySource
from ncinspect.metrics.head import Head
from ncinspect.stats.blocks import UNIT32, UNIT64, dot_error_bound
from ncinspect.stats.classification import (
    _ONE_HOT_MAX_K,
    ClassMoments,
    ClassScatter,
    ClassSums,
    plan_scatter,
)
from ncinspect.stats.regression import RegressionCentred, RegressionMoments, UnitProjections

# --------------------------------------------------------------------------------------------
# the error bound


@pytest.mark.parametrize("d", [1, 3, 64, 512, 2048])
def test_dot_error_bound_holds_for_float32_products(d: int) -> None:
    rng = np.random.default_rng(d)
    a = rng.standard_normal((300, d)) * rng.uniform(0.1, 1e3, (300, 1))
    b = rng.standard_normal((40, d))
    # cancellation: rows nearly orthogonal to some b, and exactly ties between two columns
    a[:100] -= (a[:100] @ b[0])[:, None] * b[0] / (b[0] @ b[0])
    b[1] = b[0] * (1 + 1e-7)
    exact = np.asarray(a, np.longdouble) @ np.asarray(b, np.longdouble).T
    approx = a.astype(np.float32) @ b.astype(np.float32).T
    bound = dot_error_bound(d, UNIT32) * np.outer(
        np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    )
    assert np.all(np.abs(approx - exact) <= bound)
    approx64 = a @ b.T
    bound64 = dot_error_bound(d, UNIT64) * np.outer(
        np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    )
    assert np.all(np.abs(approx64 - exact) <= bound64)


def test_dot_error_bound_is_not_vacuous() -> None:
    # the float32 bound is a few D x u32, far below the quantities it certifies
    assert dot_error_bound(512, UNIT32) < 600 * UNIT32
    assert dot_error_bound(512, UNIT64) < 600 * UNIT64


# --------------------------------------------------------------------------------------------
# certified argmax / argmin: equal to the plain float64 computation, row by row


def reference_scatter(plan, x: np.ndarray, y: np.ndarray) -> tuple:
    """The plain float64 pass 2 (the code before issue #7): scatter, m2, pred, nearest."""
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
    logits, dist, logit_scale, dist_scale = exact_scores(plan, x)
    present = np.flatnonzero(plan.present)
    xnorm = np.linalg.norm(np.asarray(x, np.float64), axis=1) * (1 + 1e-9)
    pred = plan.logits.argmax(x, xnorm)
    ncc = plan.ncc.from_features(x, xnorm)
    assert_same_or_tied(pred, pred_ref, logits, logit_scale)
    assert_same_or_tied(
        np.searchsorted(present, ncc), np.searchsorted(present, ncc_ref), dist, dist_scale
    )
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
    scores = z @ lg.coef.T + lg.table[y]
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


# --------------------------------------------------------------------------------------------
# pass 1 and the finite-row check


@pytest.mark.parametrize(
    ("rows", "d", "n"),
    [(600, 512, 9), (1000, 256, 32), (37, 512, 9), (600, 512, 33), (5, 3, 2)],
)
def test_thin_matmul_equals_one_product(rows: int, d: int, n: int) -> None:
    """Row pieces (first two cases: over 10^6 multiply-adds, N <= 32, a short last piece) or
    one call (small, or N > 32): the product of a naive float64 loop to summation rounding."""
    rng = np.random.default_rng(rows + n)
    a = rng.standard_normal((rows, d)) + 3.0
    b = np.ascontiguousarray(rng.standard_normal((n, d)).T)
    padded = np.full((rows + 4, n), np.nan)
    out = padded[2:-2]  # a view: nothing outside it may be written
    got = st.thin_matmul(a, b, out=out)
    assert got is out
    assert np.isnan(padded[:2]).all() and np.isnan(padded[-2:]).all()
    naive = np.array([[math.fsum(a[i] * b[:, j]) for j in range(n)] for i in range(rows)])
    scale = np.abs(a) @ np.abs(b)
    assert np.all(np.abs(got - naive) <= st.dot_error_bound(d, st.UNIT64) * scale)


# both sides of the one-hot GEMM / sorted-runs switch, and many classes
@pytest.mark.parametrize("k", [3, _ONE_HOT_MAX_K, _ONE_HOT_MAX_K + 1, 32, 200])
def test_class_sums_equal_the_naive_sums(k: int) -> None:
    rng = np.random.default_rng(k)
    x = rng.standard_normal((1500, 7)).astype(np.float32) + 10
    y = rng.integers(0, k, 1500)
    sums = ClassSums.from_batch(x, y, k)
    naive = np.stack([x[y == c].astype(np.float64).sum(axis=0) for c in range(k)])
    np.testing.assert_allclose(sums.sums, naive, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(sums.counts, np.bincount(y, minlength=k))
    moments = sums.moments()
    np.testing.assert_allclose(moments.means, ClassMoments.from_batch(x, y, k).means, rtol=1e-12)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_nonfinite_rows_are_counted_in_the_pass_that_finds_them(task: str) -> None:
    """Without --drop-nonfinite the refusal counts every bad row (here in the first, a middle
    and the last block) from the rest of the same pass: the rows are read once, not again (for
    `extract --stats-only` a second pass would be a second forward pass)."""
    rng = np.random.default_rng(4)
    n, d = 250, 5
    x = rng.standard_normal((n, d)) + 1
    x[[1, 2], 0] = np.nan
    x[[120, 249], 3] = -np.inf
    kw: dict = {"labels": rng.integers(0, 3, n)}
    if task == "regression":
        kw = {"targets": rng.standard_normal((n, 2))}
    source = ArraySource(
        path="counted.h5",
        task=task,
        n=n,
        d=d,
        head=Head(rng.standard_normal((3 if task == "classification" else 2, d)), None),
        has_outputs=False,
        features=x,
        **kw,
    )
    reads: list[int] = []
    real = source._read

    def counted(start: int, stop: int, *args: Any) -> Any:
        reads.append(start)
        return real(start, stop, *args)

    source._read = counted  # type: ignore[method-assign]
    with pytest.raises(InputError, match=r"'features' has 4 row\(s\) with NaN or Inf"):
        analyze_source(source, AnalysisOptions(chunk_rows=40))
    assert reads == list(range(0, n, 40))  # every block once


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_dropping_nonfinite_rows_drops_the_same_rows_in_both_passes(task: str) -> None:
    rng = np.random.default_rng(9)
    n, d = 300, 6
    x = rng.standard_normal((n, d)) + 2
    bad = np.array([3, 50, 51, 299])
    x[bad[:2], 1] = np.nan
    x[bad[2:], 0] = np.inf
    keep = np.setdiff1d(np.arange(n), bad)
    w = rng.standard_normal((3, d))
    if task == "classification":
        y = rng.integers(0, 3, n)
        kw: dict = {"labels": y}
        kw_keep: dict = {"labels": y[keep]}
    else:
        t = rng.standard_normal((n, 3))
        kw = {"targets": t}
        kw_keep = {"targets": t[keep]}
    opts = AnalysisOptions(chunk_rows=41, drop_nonfinite=True)
    got = analyze_arrays(x, w, None, options=opts, **kw)
    want = analyze_arrays(x[keep], w, None, options=AnalysisOptions(chunk_rows=41), **kw_keep)
    assert got.info["nonfinite_rows_dropped"] == 4 and got.n == n - 4
    for key, value in want.metrics.items():
        assert got.metrics[key] == pytest.approx(value, rel=1e-10, abs=1e-13, nan_ok=True), key


def test_batches_without_outputs() -> None:
    x = np.zeros((5, 2))
    src = ArraySource(
        path="<t>",
        task="classification",
        n=5,
        d=2,
        head=Head(np.ones((2, 2)), None),
        has_outputs=True,
        features=x,
        labels=np.zeros(5, dtype=np.int64),
        outputs=np.ones((5, 2)),
    )
    assert all(b.outputs is not None for b in src.batches(2))
    assert all(b.outputs is None for b in src.batches(2, outputs=False))


def test_store_batches_reusing_one_buffer_read_every_row(tmp_path) -> None:
    from ncinspect.io.store.reader import open_store
    from ncinspect.io.store.writer import write_store

    rng = np.random.default_rng(13)
    x = rng.standard_normal((103, 5)).astype(np.float32)
    y = rng.integers(0, 3, 103)
    path = write_store(tmp_path / "s.h5", features=x, labels=y, weight=np.ones((3, 5)))
    source = open_store(path)
    try:
        got = [b.features.copy() for b in source.batches(10, reuse=True)]
        shared = {b.features.base is not None for b in source.batches(10, reuse=True)}
        labels = np.concatenate([b.labels for b in source.batches(10, reuse=True)])
    finally:
        source.close()
    np.testing.assert_array_equal(np.concatenate(got), x)
    np.testing.assert_array_equal(labels, y)
    assert shared == {True}  # views of the one reused buffer


# --------------------------------------------------------------------------------------------
# regression: projections instead of D x D unit moments


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_finite_rows_equal_the_entrywise_test(dtype: type) -> None:
    from ncinspect.analysis.rows import finite_row_mask

    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 33)).astype(dtype)
    big = np.finfo(dtype).max
    x[1, 3] = np.nan
    x[2, 0] = np.inf
    x[3, 5] = -np.inf
    x[4, [1, 2]] = [np.inf, -np.inf]  # the row sum is NaN
    x[5, :] = big  # finite entries whose sum overflows: still a finite row
    x[6, [0, 1]] = [big, -big]
    x[7, -1] = np.nan
    x[7, 0] = np.inf
    np.testing.assert_array_equal(finite_row_mask(x), np.isfinite(x).all(axis=1))
    assert finite_row_mask(x)[5] and not finite_row_mask(x)[1:5].any()
