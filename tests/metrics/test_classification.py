"""Classification metrics (`metrics.classification`, `stats.classification`) against the spec.

Every expected value comes from `oracle_nc` (a naive, independent implementation of
docs/metrics.md), from closed forms (the exact simplex ETF), or from the spec's
invariances; nothing here is copied from ncinspect's own output.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ncinspect.analysis.arrays import analyze_arrays
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.metrics.keys import CLASSIFICATION_KEYS, keys_for
from ncinspect.stats.classification import ClassMoments, ClassScatter, plan_scatter
from tests.helpers.oracle_nc import KEYS, classification_oracle
from tests.helpers.synth import random_orthogonal

ROUTES = ("class_span", "dxd")
SHAPES = ((5, 16), (9, 8), (12, 6))  # K < D, K - 1 = D, K > D
RTOL = 1e-6
ATOL = 1e-12

# Normalized metrics: unchanged by scaling the features or W by c > 0 (the spec's invariance).
# nc4 and accuracy depend on the logits c W h + b, which change with c when b != 0; bias_gap is
# ||W mu_G + b||, and the norms are lengths: neither is normalized at all.
LOGIT_KEYS = ("nc4", "accuracy")
NORMS = ("mean_norm_means", "mean_norm_weights", "mean_norm_features", "norm_ratio")
NORMALIZED_KEYS = tuple(k for k in KEYS if k not in (*LOGIT_KEYS, "bias_gap", *NORMS))


# --------------------------------------------------------------------------------------------
# helpers


def make_data(
    seed: int,
    k: int,
    d: int,
    per_class: int = 25,
    *,
    noise: float = 1.0,
    bias: bool = True,
    empty: tuple[int, ...] = (),
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Unbalanced, shuffled classification data; classes in `empty` get no samples."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 2.0 + rng.normal(size=d)
    labels = []
    for c in range(k):
        if c not in empty:
            labels += [c] * int(rng.integers(per_class // 2, per_class + per_class // 2 + 1))
    y = rng.permutation(np.array(labels, dtype=np.int64))
    x = means[y] + noise * rng.normal(size=(y.size, d))
    w = means - means.mean(axis=0) + 0.7 * rng.normal(size=(k, d))
    b = rng.normal(size=k) if bias else None
    return x.astype(dtype), y, w, b


def analyze(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    route: str = "auto",
    chunk_rows: int | None = None,
):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return analyze_arrays(
            x, w, b, labels=y, options=AnalysisOptions(chunk_rows=chunk_rows, nc1_route=route)
        )


def assert_metrics_close(
    actual: dict[str, float],
    expected: dict[str, float],
    keys: tuple[str, ...] = KEYS,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> None:
    bad = []
    for key in keys:
        a, e = actual[key], expected[key]
        if math.isnan(e) or math.isnan(a):
            if not (math.isnan(e) and math.isnan(a)):
                bad.append(f"{key}: got {a!r}, expected {e!r}")
        elif not math.isclose(a, e, rel_tol=rtol, abs_tol=atol):
            bad.append(f"{key}: got {a!r}, expected {e!r}")
    assert not bad, "\n".join(bad)


def simplex_etf(rng: np.random.Generator, k: int, d: int, scale: float) -> np.ndarray:
    """(K, D) centred simplex ETF (needs D >= K - 1) in a random orthonormal frame."""
    assert d >= k - 1
    # Orthonormal basis of the complement of 1 in R^K, then a random isometry R^{K-1} -> R^D.
    centring = np.eye(k) - np.full((k, k), 1.0 / k)
    u, _, _ = np.linalg.svd(centring)
    basis = u[:, : k - 1]  # (K, K-1), columns orthogonal to 1
    frame = random_orthogonal(rng, d)[: k - 1]  # (K-1, D) orthonormal rows
    etf = centring @ basis @ frame
    return scale * etf / np.linalg.norm(etf[0])


# --------------------------------------------------------------------------------------------
# every metric against the oracle


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize(("k", "d"), SHAPES, ids=[f"K{k}D{d}" for k, d in SHAPES])
def test_every_metric_matches_oracle(k: int, d: int, bias: bool, route: str) -> None:
    x, y, w, b = make_data(100 + k * d, k, d, noise=3.0, bias=bias)
    expected = classification_oracle(x, y, w, b)
    r = analyze(x, y, w, b, route=route)
    assert tuple(r.metrics) == keys_for("classification")
    assert set(KEYS) == set(CLASSIFICATION_KEYS)
    for key in KEYS:  # random data: every metric is defined
        assert math.isfinite(expected.metrics[key]), key
    assert_metrics_close(r.metrics, expected.metrics)
    assert r.info["k_eff"] == k
    assert r.info["nc1_rank"] == expected.nc1_rank == min(k - 1, d)
    # nc4 / accuracy are non-trivial on this data (the test can see a wrong count).
    assert 0.0 < expected.metrics["accuracy"] < 1.0
    assert 0.0 < expected.metrics["nc4"] < 1.0


@pytest.mark.parametrize(("k", "d"), SHAPES, ids=[f"K{k}D{d}" for k, d in SHAPES])
def test_nc1_routes_agree_with_each_other_and_auto(k: int, d: int) -> None:
    x, y, w, b = make_data(7 + k, k, d, noise=0.5)
    results = {route: analyze(x, y, w, b, route=route) for route in (*ROUTES, "auto")}
    assert results["class_span"].info["nc1_route"] != results["dxd"].info["nc1_route"]
    for route in ("dxd", "auto"):
        assert_metrics_close(results[route].metrics, results["class_span"].metrics, rtol=1e-9)
        assert results[route].info["nc1_rank"] == results["class_span"].info["nc1_rank"]


@pytest.mark.parametrize("route", ROUTES)
def test_float32_features_match_oracle(route: str) -> None:
    x, y, w, b = make_data(3, 6, 10, dtype=np.float32)
    assert x.dtype == np.float32
    expected = classification_oracle(x, y, w, b)
    assert_metrics_close(analyze(x, y, w, b, route=route).metrics, expected.metrics)


def test_nc4_ties_go_to_the_lowest_class_index() -> None:
    # Integer data, so the tie is exact: h = (0, 0) is at distance 1 from mu_0 = (-1, 0) and from
    # mu_1 = (1, 0); the nearest-mean rule must pick class 0. The logits pick class 1 there.
    x = np.array([[-2, 0], [0, 0], [0, 0], [2, 0], [0, 4], [0, 6]], dtype=np.float64)
    y = np.array([0, 0, 1, 1, 2, 2])
    w = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    b = np.array([0.0, 0.5, -10.0])
    # Per sample: (pred, nearest) = (0,0) (1,0) (1,0) (1,1) (1,2) (1,2) -> 4 mismatches of 6;
    # pred == y for samples 1, 3 and 4 -> accuracy 3/6.
    expected = classification_oracle(x, y, w, b)
    assert expected.metrics["nc4"] == pytest.approx(4 / 6)
    for route in ROUTES:
        r = analyze(x, y, w, b, route=route)
        assert r.metrics["nc4"] == pytest.approx(4 / 6)
        assert r.metrics["accuracy"] == pytest.approx(3 / 6)


# --------------------------------------------------------------------------------------------
# exact simplex ETF


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("k", "d"), [(5, 16), (9, 8), (3, 2), (4, 7)])
def test_exact_simplex_etf_is_fully_collapsed(k: int, d: int, route: str) -> None:
    rng = np.random.default_rng(k * 31 + d)
    mc = simplex_etf(rng, k, d, scale=2.5)
    mu_g = rng.normal(size=d) * 3.0
    means = mu_g + mc
    # The construction really is a simplex ETF: equal norms, pairwise cosines -1/(K-1).
    cos = (mc @ mc.T) / np.outer(np.linalg.norm(mc, axis=1), np.linalg.norm(mc, axis=1))
    off = cos[~np.eye(k, dtype=bool)]
    np.testing.assert_allclose(off, -1.0 / (k - 1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(mc, axis=1), 2.5, rtol=1e-12)

    per_class = 4
    y = np.repeat(np.arange(k), per_class)
    rng.shuffle(y)
    x = means[y]  # zero within-class noise, balanced, so mu_G is the mean of the means
    w = mc.copy()  # W = Mc
    b = -w @ mu_g  # b = -W mu_G
    r = analyze(x, y, w, b, route=route)
    m = r.metrics
    zero_keys = [key for key in KEYS if key.startswith(("nc1", "nc2_", "nc3"))] + ["nc4"]
    for key in zero_keys:
        assert m[key] == pytest.approx(0.0, abs=1e-9), key
    assert m["accuracy"] == 1.0
    assert m["bias_gap"] == pytest.approx(0.0, abs=1e-9)
    assert r.info["nc1_rank"] == k - 1
    # The class means the tool saw are the same ETF: cosines -1/(K-1) from the data's means.
    seen = classification_oracle(x, y, w, b)
    seen_mc = seen.class_means - x.mean(axis=0)
    seen_cos = (seen_mc @ seen_mc.T) / np.outer(
        np.linalg.norm(seen_mc, axis=1), np.linalg.norm(seen_mc, axis=1)
    )
    np.testing.assert_allclose(seen_cos[~np.eye(k, dtype=bool)], -1.0 / (k - 1), atol=1e-12)
    assert not any("ETF" in msg for msg in r.warnings)


# --------------------------------------------------------------------------------------------
# invariances


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("k", "d"), SHAPES, ids=[f"K{k}D{d}" for k, d in SHAPES])
def test_rotation_invariance(k: int, d: int, route: str) -> None:
    x, y, w, b = make_data(11 + k, k, d)
    q = random_orthogonal(np.random.default_rng(99), d)
    base = analyze(x, y, w, b, route=route).metrics
    rotated = analyze(x @ q.T, y, w @ q.T, b, route=route).metrics  # h -> Q h, W -> W Q^T
    assert_metrics_close(rotated, base, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("k", "d"), SHAPES, ids=[f"K{k}D{d}" for k, d in SHAPES])
def test_class_permutation_invariance(k: int, d: int, route: str) -> None:
    x, y, w, b = make_data(21 + k, k, d)
    perm = np.random.default_rng(5).permutation(k)
    assert not np.array_equal(perm, np.arange(k))
    w_p = np.empty_like(w)
    w_p[perm] = w  # class c becomes class perm[c], and so does its row of W
    b_p = np.empty_like(b)
    b_p[perm] = b
    base = analyze(x, y, w, b, route=route).metrics
    permuted = analyze(x, perm[y], w_p, b_p, route=route).metrics
    assert_metrics_close(permuted, base, rtol=1e-9)


@pytest.mark.parametrize("c", [1e-3, 0.37, 250.0])
@pytest.mark.parametrize("route", ROUTES)
def test_feature_scaling(c: float, route: str) -> None:
    x, y, w, b = make_data(31, 7, 9)
    # With a bias: every normalized metric is unchanged (nc1 is scale-free in H).
    base = analyze(x, y, w, b, route=route).metrics
    scaled = analyze(c * x, y, w, b, route=route).metrics
    assert_metrics_close(scaled, base, keys=NORMALIZED_KEYS, rtol=1e-8)
    # bias_gap = ||c W mu_G + b|| follows the closed form (not a normalized metric).
    mu_g = x.mean(axis=0)
    assert scaled["bias_gap"] == pytest.approx(np.linalg.norm(c * w @ mu_g + b), rel=1e-9)
    # Without a bias the logits scale by c, so argmax (accuracy, nc4) is unchanged too.
    base0 = analyze(x, y, w, None, route=route).metrics
    scaled0 = analyze(c * x, y, w, None, route=route).metrics
    assert_metrics_close(scaled0, base0, keys=NORMALIZED_KEYS + LOGIT_KEYS, rtol=1e-8)
    assert scaled0["bias_gap"] == pytest.approx(c * base0["bias_gap"], rel=1e-9)


@pytest.mark.parametrize("c", [1e-3, 4.0, 1e3])
def test_weight_scaling(c: float) -> None:
    x, y, w, b = make_data(41, 6, 5)
    base = analyze(x, y, w, b).metrics
    scaled = analyze(x, y, c * w, b).metrics
    assert_metrics_close(scaled, base, keys=NORMALIZED_KEYS, rtol=1e-8)
    # Scaling W and b together leaves every argmax alone; bias_gap scales by c.
    both = analyze(x, y, c * w, c * b).metrics
    assert_metrics_close(both, base, keys=NORMALIZED_KEYS + LOGIT_KEYS, rtol=1e-8)
    assert both["bias_gap"] == pytest.approx(c * base["bias_gap"], rel=1e-9)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("k", "d"), [(5, 16), (12, 6)])
def test_chunk_rows_do_not_change_results(k: int, d: int, route: str) -> None:
    x, y, w, b = make_data(51 + k, k, d, per_class=12)
    n = x.shape[0]
    one_shot = analyze(x, y, w, b, route=route, chunk_rows=None).metrics
    for rows in (1, 7, 64, n):
        chunked = analyze(x, y, w, b, route=route, chunk_rows=rows).metrics
        assert_metrics_close(chunked, one_shot, rtol=1e-10)
        assert chunked["nc4"] == one_shot["nc4"]
        assert chunked["accuracy"] == one_shot["accuracy"]


def _split(rng: np.random.Generator, n: int, parts: int) -> list[slice]:
    cuts = np.sort(rng.integers(0, n + 1, size=parts - 1))
    edges = [0, *cuts.tolist(), n]
    return [slice(a, c) for a, c in zip(edges[:-1], edges[1:], strict=True)]


def assert_moments_equal(a: ClassMoments, b: ClassMoments, rtol: float = 1e-10) -> None:
    np.testing.assert_array_equal(a.counts, b.counts)
    scale = 1.0 + float(np.max(np.abs(b.means), initial=0.0))
    np.testing.assert_allclose(a.means, b.means, rtol=rtol, atol=1e-12 * scale)
    np.testing.assert_allclose(a.m2, b.m2, rtol=rtol, atol=1e-12 * scale**2 * (1 + b.n))


@pytest.mark.parametrize("route", ROUTES)
def test_partial_statistics_merged_in_any_order_equal_one_pass(route: str) -> None:
    k, d = 7, 5
    x, y, w, b = make_data(61, k, d, per_class=15)
    x = x + 40.0  # a large common mean stresses the merge
    n = x.shape[0]
    rng = np.random.default_rng(62)
    one_pass = ClassMoments.from_batch(x, y, k)
    np.testing.assert_array_equal(one_pass.counts, np.bincount(y, minlength=k))
    plan = plan_scatter(one_pass, w, b, route)
    scatter_one = ClassScatter.from_batch(plan, x, y)
    # Ground truth for the merge targets, computed directly.
    oracle = classification_oracle(x, y, w, b)
    np.testing.assert_allclose(one_pass.means, oracle.class_means, rtol=1e-12)
    for trial in range(3):
        parts = _split(rng, n, 6 + trial)
        parts.append(slice(0, 0))  # an empty block merges as a no-op
        order = rng.permutation(len(parts))
        moments = ClassMoments.empty(k, d)
        scatter = ClassScatter.empty(plan)
        for i in order:
            sl = parts[i]
            moments = moments.merge(ClassMoments.from_batch(x[sl], y[sl], k))
            scatter = scatter.merge(ClassScatter.from_batch(plan, x[sl], y[sl]))
        assert_moments_equal(moments, one_pass)
        np.testing.assert_allclose(scatter.scatter, scatter_one.scatter, rtol=1e-10, atol=1e-9)
        assert (scatter.n, scatter.correct, scatter.ncc_mismatch) == (
            scatter_one.n,
            scatter_one.correct,
            scatter_one.ncc_mismatch,
        )
        # A tree-shaped merge (pairs of pairs) in a shuffled order gives the same result.
        blocks = [ClassMoments.from_batch(x[parts[i]], y[parts[i]], k) for i in order]
        while len(blocks) > 1:
            rng.shuffle(blocks)
            blocks = [
                blocks[j].merge(blocks[j + 1]) if j + 1 < len(blocks) else blocks[j]
                for j in range(0, len(blocks), 2)
            ]
        assert_moments_equal(blocks[0], one_pass)


# --------------------------------------------------------------------------------------------
# property tests


@st.composite
def moment_blocks(draw: st.DrawFn) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
    k = draw(st.integers(1, 4))
    d = draw(st.integers(1, 3))
    blocks = []
    for _ in range(3):
        rows = draw(st.integers(0, 6))
        feats = draw(
            hnp.arrays(
                np.float64,
                (rows, d),
                elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
            )
        )
        labels = draw(hnp.arrays(np.int64, (rows,), elements=st.integers(0, k - 1)))
        blocks.append((feats, labels))
    return k, blocks


def _moments_close(a: ClassMoments, b: ClassMoments, scale: float) -> None:
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.means, b.means, rtol=1e-10, atol=1e-10 * scale)
    np.testing.assert_allclose(a.m2, b.m2, rtol=1e-9, atol=1e-9 * scale**2 * (1 + b.n))


@settings(max_examples=30, deadline=None)
@given(moment_blocks())
def test_moments_merge_is_associative_and_commutative(
    case: tuple[int, list[tuple[np.ndarray, np.ndarray]]],
) -> None:
    k, raw = case
    a, b, c = (ClassMoments.from_batch(f, lab, k) for f, lab in raw)
    scale = 1.0 + max((float(np.max(np.abs(f), initial=0.0)) for f, _ in raw), default=0.0)
    _moments_close(a.merge(b), b.merge(a), scale)
    _moments_close(a.merge(b).merge(c), a.merge(b.merge(c)), scale)
    _moments_close(a.merge(ClassMoments.empty(k, a.d)), a, scale)
    # And the merge is the one-pass statistic of the concatenated rows.
    allf = np.concatenate([f for f, _ in raw])
    ally = np.concatenate([lab for _, lab in raw])
    _moments_close(a.merge(b).merge(c), ClassMoments.from_batch(allf, ally, k), scale)


_CHUNK_DATA = make_data(71, 6, 4, per_class=8)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 80), route=st.sampled_from(ROUTES))
def test_results_independent_of_chunk_size(rows: int, route: str) -> None:
    x, y, w, b = _CHUNK_DATA
    one_shot = analyze(x, y, w, b, route=route)
    chunked = analyze(x, y, w, b, route=route, chunk_rows=rows)
    assert_metrics_close(chunked.metrics, one_shot.metrics, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# edge cases


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("empty", [(2,), (0, 5)], ids=["middle", "first_and_last"])
def test_empty_class_uses_k_eff(empty: tuple[int, ...], route: str) -> None:
    k, d = 6, 10
    x, y, w, b = make_data(81 + len(empty), k, d, empty=empty)
    assert set(np.unique(y).tolist()) == set(range(k)) - set(empty)
    r = analyze(x, y, w, b, route=route)
    expected = classification_oracle(x, y, w, b)
    assert r.info["k_eff"] == expected.k_eff == k - len(empty)
    assert any("no samples" in msg or "K_eff" in msg for msg in r.warnings), r.warnings
    assert_metrics_close(r.metrics, expected.metrics)
    assert r.info["nc1_rank"] == expected.nc1_rank == k - len(empty) - 1
    # The weight metrics really use all K rows: the present-rows-only values differ.
    remap = np.full(k, -1)
    remap[expected.present] = np.arange(expected.k_eff)
    present_only = classification_oracle(x, remap[y], w[expected.present], b[expected.present])
    assert not math.isclose(
        r.metrics["nc2_etf_weights"], present_only.metrics["nc2_etf_weights"], rel_tol=1e-3
    )


@pytest.mark.parametrize("route", ROUTES)
def test_nearest_mean_rule_ignores_empty_classes(route: str) -> None:
    # Class 1 is empty; samples near the origin must go to the nearest *present* mean (class 0 or
    # 2), never to class 1 (whose placeholder mean, if one were used, is not a class mean).
    rng = np.random.default_rng(131)
    centres = np.array([[-4.0, 0.0], [0.0, 0.0], [4.0, 0.0]])
    y = np.array([0] * 20 + [2] * 20)
    x = centres[y] + 1.5 * rng.normal(size=(40, 2))
    x[:4] = [[-0.5, 0.1], [-0.3, -0.2], [-0.4, 0.3], [-0.1, 0.0]]  # class 0, near the origin
    x[20:24] = [[0.5, 0.1], [0.3, -0.2], [0.4, 0.3], [0.1, 0.0]]  # class 2, near the origin
    # Logits that favour class 1 near the origin: the classifier answers 1 there.
    w = np.array(
        [[-1.0, 0.0], [0.0, 0.01], [1.0, 0.0]]
    )  # no zero row: avoids the spec-ambiguous drop case
    b = np.array([0.0, 1.5, 0.0])
    expected = classification_oracle(x, y, w, b)
    r = analyze(x, y, w, b, route=route)
    assert r.info["k_eff"] == 2
    assert_metrics_close(r.metrics, expected.metrics)
    # Sanity: the classifier really predicts the empty class for the near-origin samples.
    assert np.all(np.argmax(x[:4] @ w.T + b, axis=1) == 1)


def test_single_sample_class_warns_and_contributes_zero_scatter() -> None:
    x, y, w, b = make_data(91, 5, 7)
    keep = np.ones(y.size, dtype=bool)
    keep[np.flatnonzero(y == 3)[1:]] = False  # class 3 keeps exactly one sample
    x, y = x[keep], y[keep]
    assert np.count_nonzero(y == 3) == 1
    for route in ROUTES:
        r = analyze(x, y, w, b, route=route)
        assert any("single sample" in msg or "one sample" in msg for msg in r.warnings), r.warnings
        assert_metrics_close(r.metrics, classification_oracle(x, y, w, b).metrics)


@pytest.mark.parametrize("route", ROUTES)
def test_two_classes_equiangle_is_nan_with_reason(route: str) -> None:
    x, y, w, b = make_data(101, 2, 5)
    r = analyze(x, y, w, b, route=route)
    expected = classification_oracle(x, y, w, b)
    for key in ("nc2_equiangle_means", "nc2_equiangle_weights"):
        assert math.isnan(r.metrics[key]), key
        assert any(key in msg for msg in r.warnings), r.warnings
    assert_metrics_close(r.metrics, expected.metrics)  # the rest is defined and correct
    assert math.isfinite(r.metrics["nc2_maxangle_means"])


def test_etf_floor_warning_only_when_k_minus_1_exceeds_d() -> None:
    x, y, w, b = make_data(111, 12, 6)  # K - 1 = 11 > D = 6
    r = analyze(x, y, w, b)
    assert any("ETF" in msg for msg in r.warnings), r.warnings
    x, y, w, b = make_data(112, 9, 8)  # K - 1 = D: an exact ETF exists
    r = analyze(x, y, w, b)
    assert not any("ETF" in msg for msg in r.warnings), r.warnings


@pytest.mark.parametrize("route", ROUTES)
def test_identical_class_means_exact_gives_nan_nc1_with_reason(route: str) -> None:
    # Integer features, every class holds the same 3 rows: the means coincide exactly.
    rng = np.random.default_rng(121)
    base = rng.integers(-5, 6, size=(3, 5)).astype(np.float64)
    k = 4
    x = np.concatenate([base] * k)
    y = np.repeat(np.arange(k), 3)
    w = rng.normal(size=(k, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning (nor any other) may escape
        r = analyze(x, y, w, None, route=route)
    assert math.isnan(r.metrics["nc1"])
    assert math.isnan(r.metrics["nc1_cdnv"])
    assert any(msg.startswith("nc1 ") or "nc1:" in msg for msg in r.warnings), r.warnings
    expected = classification_oracle(x, y, w)
    assert_metrics_close(r.metrics, expected.metrics)


@pytest.mark.parametrize("route", ROUTES)
def test_identical_class_means_rounding_gives_nan_nc1(route: str) -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 5))
    x = np.concatenate([base] * 3)  # 3 classes, each the same 3 rows: identical means
    y = np.repeat(np.arange(3), 3)
    w = rng.normal(size=(3, 5))
    r = analyze(x, y, w, None, route=route)
    assert math.isnan(r.metrics["nc1"]), r.metrics["nc1"]
    assert any(msg.startswith("nc1 ") for msg in r.warnings), r.warnings


def test_zero_centred_mean_dropped_from_angles() -> None:
    # Five classes; class 4 sits exactly at the global mean, so its cosines are undefined.
    means = np.array([[2.0, 0, 0], [-2.0, 0, 0], [0, 2.0, 0], [0, -2.0, 0], [0, 0, 0]])
    y = np.repeat(np.arange(5), 4)
    offsets = np.array([[0.1, 0, 0.2], [-0.1, 0, -0.2], [0, 0.1, 0.2], [0, -0.1, -0.2]])
    x = means[y] + np.tile(offsets, (5, 1))
    w = np.random.default_rng(0).normal(size=(5, 3))
    r = analyze(x, y, w, None, route="auto")
    assert any("1 centred class-mean vector(s) are zero" in m for m in r.warnings), r.warnings
    # The four remaining means are two antipodal pairs at right angles: cosines 0,0,0,0,-1,-1.
    cos = np.array([-1.0, 0, 0, 0, 0, -1.0])
    assert r.metrics["nc2_equiangle_means"] == pytest.approx(cos.std(ddof=1))
    assert r.metrics["nc2_maxangle_means"] == pytest.approx(np.mean(np.abs(cos + 1 / 3)))
