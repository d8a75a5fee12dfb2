"""`--global-mean`: the sample mean (weighted, the default) or the plain mean of the class means
(unweighted), against a naive computation written here from docs/metrics.md.

On imbalanced classes the two differ, and every key that centres on mu_G must follow the choice
(nc1, nc2_*_means, nc3, nc3_etf, bias_gap) while Sigma_W and nc1_cdnv stay as they are; on
balanced classes the two means coincide and so does every key.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncinspect.analysis.arrays import analyze_arrays
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.errors import UsageError
from ncinspect.metrics.classification import classification_metrics
from ncinspect.stats.classification import ClassMoments, ClassScatter, plan_scatter

# Very unequal class sizes: the two global means lie far apart.
SIZES = (6, 90, 15, 240, 30)
K = len(SIZES)


def imbalanced(seed: int, d: int, sizes: tuple[int, ...] = SIZES) -> tuple[np.ndarray, ...]:
    """Features with a class mean each, the classes `sizes` rows long, shuffled; a noisy head."""
    rng = np.random.default_rng(seed)
    k = len(sizes)
    means = 3.0 * rng.normal(size=(k, d)) + rng.normal(size=d)
    y = rng.permutation(np.repeat(np.arange(k), sizes))
    x = means[y] + rng.normal(size=(y.size, d))
    w = means - means.mean(axis=0) + 0.5 * rng.normal(size=(k, d))
    b = rng.normal(size=k)
    return x, y, w, b


def naive(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, how: str) -> dict:
    """nc1, nc1_cdnv, nc2_etf_means, nc2_equinorm_means, nc3, nc3_etf and bias_gap, the slow way,
    with mu_G the sample mean ("weighted") or the mean of the class means ("unweighted")."""
    k = w.shape[0]
    means = np.array([x[y == c].mean(axis=0) for c in range(k)])
    mu_g = x.mean(axis=0) if how == "weighted" else means.mean(axis=0)
    mc = means - mu_g
    n, d = x.shape
    sigma_w = sum(np.outer(x[i] - means[y[i]], x[i] - means[y[i]]) for i in range(n)) / n
    sigma_b = sum(np.outer(row, row) for row in mc) / k
    vals, vecs = np.linalg.eigh(sigma_b)
    order = np.argsort(vals)[::-1][: min(k - 1, d)]
    vals, vecs = vals[order], vecs[:, order]
    kept = vals > 1e-10 * vals[0]
    pinv = (vecs[:, kept] / vals[kept]) @ vecs[:, kept].T
    etf = (np.eye(k) - 1.0 / k) / math.sqrt(k - 1)
    gram = mc @ mc.T
    cross = w @ mc.T
    norms = np.linalg.norm(mc, axis=1)
    var = np.array([((x[y == c] - means[c]) ** 2).sum(axis=1).mean() for c in range(k)])
    pairs = [
        (var[i] + var[j]) / (2 * np.sum((means[i] - means[j]) ** 2))
        for i in range(k)
        for j in range(i + 1, k)
    ]
    return {
        "nc1": float(np.trace(sigma_w @ pinv)) / k,
        "nc1_cdnv": float(np.mean(pairs)),
        "nc2_equinorm_means": float(norms.std(ddof=1) / norms.mean()),
        "nc2_etf_means": float(np.linalg.norm(gram / np.linalg.norm(gram) - etf)),
        "nc3": float(np.sum((w / np.linalg.norm(w) - mc / np.linalg.norm(mc)) ** 2)),
        "nc3_etf": float(np.linalg.norm(cross / np.linalg.norm(cross) - etf)),
        "bias_gap": float(np.linalg.norm(w @ mu_g + b)),
        "sigma_w": sigma_w,
    }


def analyze(x, y, w, b, how: str, route: str = "auto", chunk_rows: int | None = None):
    options = AnalysisOptions(global_mean=how, nc1_route=route, chunk_rows=chunk_rows)
    return analyze_arrays(x, w, b, labels=y, options=options)


KEYS = ("nc1", "nc1_cdnv", "nc2_equinorm_means", "nc2_etf_means", "nc3", "nc3_etf", "bias_gap")


@pytest.mark.parametrize("route", ["class_span", "dxd"])
@pytest.mark.parametrize("d", [16, 3], ids=["D16", "D3"])  # K - 1 < D and K - 1 > D
@pytest.mark.parametrize("how", ["weighted", "unweighted"])
def test_each_mean_matches_the_naive_computation(how: str, d: int, route: str) -> None:
    x, y, w, b = imbalanced(d, d)
    want = naive(x, y, w, b, how)
    r = analyze(x, y, w, b, how, route)
    assert r.info["global_mean"] == how
    for key in KEYS:
        assert r.metrics[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("d", [16, 3], ids=["D16", "D3"])
def test_the_two_means_differ_on_imbalanced_classes_where_mu_g_enters(d: int) -> None:
    """The test above can fail: the centred keys really move, the mu_G-free ones do not."""
    x, y, w, b = imbalanced(7 + d, d)
    weighted, unweighted = naive(x, y, w, b, "weighted"), naive(x, y, w, b, "unweighted")
    got_w, got_u = analyze(x, y, w, b, "weighted"), analyze(x, y, w, b, "unweighted")
    for key in ("nc1", "nc2_etf_means", "nc3", "bias_gap"):
        assert abs(weighted[key] - unweighted[key]) > 1e-3 * abs(weighted[key]), key
        assert abs(got_w.metrics[key] - got_u.metrics[key]) > 1e-3 * abs(got_w.metrics[key]), key
    assert got_u.metrics["nc1_cdnv"] == pytest.approx(got_w.metrics["nc1_cdnv"], rel=1e-12)
    for key in ("nc2_equinorm_weights", "nc2_etf_weights", "accuracy", "nc4"):
        assert got_u.metrics[key] == got_w.metrics[key], key


def test_sigma_w_does_not_depend_on_the_mean() -> None:
    """The D x D route's pass-2 scatter is N Sigma_W whichever mean the plan carries."""
    x, y, w, b = imbalanced(3, 4)
    moments = ClassMoments.from_batch(x, y, K)
    want = naive(x, y, w, b, "unweighted")["sigma_w"] * x.shape[0]
    for how in ("weighted", "unweighted"):
        plan = plan_scatter(moments, w, b, route="dxd", global_mean=how)
        scatter = ClassScatter.from_batch(plan, x, y)
        np.testing.assert_allclose(scatter.scatter, want, rtol=1e-10, atol=1e-9)


def test_a_scatter_planned_on_the_weighted_mean_serves_the_unweighted_metrics() -> None:
    """A stats-only store keeps the class-span scatter in the weighted basis: the unweighted nc1
    from it equals the naive one (the basis change C S C^T is exact)."""
    x, y, w, b = imbalanced(11, 12)
    moments = ClassMoments.from_batch(x, y, K)
    scatter = ClassScatter.from_batch(plan_scatter(moments, w, b, route="class_span"), x, y)
    out = classification_metrics(moments, scatter, None, global_mean="unweighted")
    assert out.metrics["nc1"] == pytest.approx(naive(x, y, w, b, "unweighted")["nc1"], rel=1e-9)


@pytest.mark.parametrize("d", [16, 3], ids=["D16", "D3"])
def test_balanced_classes_give_the_same_values_under_both_means(d: int) -> None:
    x, y, w, b = imbalanced(5, d, sizes=(40,) * K)
    weighted, unweighted = analyze(x, y, w, b, "weighted"), analyze(x, y, w, b, "unweighted")
    assert weighted.metrics.keys() == unweighted.metrics.keys()
    for key, value in weighted.metrics.items():
        other = unweighted.metrics[key]
        if math.isnan(value):
            assert math.isnan(other), key
        else:
            assert other == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_empty_classes_are_left_out_of_the_unweighted_mean() -> None:
    """mu_G = (1/K_eff) sum over the classes with samples: a class without rows has no mean."""
    x, y, w, b = imbalanced(2, 10)
    present = y != 2
    x, y = x[present], y[present]
    r = analyze(x, y, w, b, "unweighted")
    means = np.array([x[y == c].mean(axis=0) for c in (0, 1, 3, 4)])
    mu_g = means.mean(axis=0)
    assert r.info["k_eff"] == 4
    assert r.metrics["bias_gap"] == pytest.approx(float(np.linalg.norm(w @ mu_g + b)), rel=1e-10)
    norms = np.linalg.norm(means - mu_g, axis=1)
    assert r.metrics["mean_norm_means"] == pytest.approx(float(norms.mean()), rel=1e-10)


@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
def test_the_chunk_size_changes_nothing_under_the_unweighted_mean(chunk_rows: int) -> None:
    x, y, w, b = imbalanced(4, 9)
    whole = analyze(x, y, w, b, "unweighted").metrics
    split = analyze(x, y, w, b, "unweighted", chunk_rows=chunk_rows).metrics
    for key, value in whole.items():
        if math.isnan(value):
            assert math.isnan(split[key]), key
        else:
            assert split[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key


def test_an_unknown_choice_is_one_usage_error() -> None:
    x, y, w, b = imbalanced(1, 4)
    with pytest.raises(UsageError, match="--global-mean: found 'median'; expected one of"):
        analyze(x, y, w, b, "median")
