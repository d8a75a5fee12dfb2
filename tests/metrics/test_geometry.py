"""The geometry keys over training against naive computations written here from docs/metrics.md:
classification's norms (mean_norm_means, mean_norm_weights, mean_norm_features, norm_ratio),
regression's per-component evr_j and nrc1_at_k, and NRC3 against the uncentred target
covariance (`--target-cov uncentred`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncinspect.analysis.arrays import analyze_arrays
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.passes import analyze_source
from ncinspect.analysis.regression import apply_run_gamma
from ncinspect.errors import UsageError
from ncinspect.io.sources import ArraySource, StatRecord
from ncinspect.metrics.classification import NO_ROWS, classification_metrics
from ncinspect.metrics.head import NO_CLASSIFIER, Head
from ncinspect.metrics.regression import UNCOVERED, Subspaces, metrics_from_subspaces
from ncinspect.metrics.results import MetricSet
from ncinspect.stats.classification import ClassMoments, ClassScatter, plan_scatter
from ncinspect.stats.regression import RegressionMoments, UnitProjections

NORMS = ("mean_norm_means", "mean_norm_weights", "mean_norm_features", "norm_ratio")
EVR = tuple(f"evr_{j}" for j in range(1, 11))
AT_K = tuple(f"nrc1_at_{k}" for k in range(1, 11))


# --------------------------------------------------------------------------------------------
# classification norms


def classes(seed: int, k: int = 4, d: int = 6) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 60, size=k)
    means = 2.0 * rng.normal(size=(k, d)) + 1.5
    y = rng.permutation(np.repeat(np.arange(k), sizes))
    x = means[y] + rng.normal(size=(y.size, d))
    w = rng.normal(size=(k, d)) * np.arange(1, k + 1)[:, None]  # rows of unequal norm
    return x, y, w, rng.normal(size=k)


def naive_norms(x: np.ndarray, y: np.ndarray, w: np.ndarray | None, how: str) -> dict:
    present = sorted(set(y.tolist()))
    means = np.array([x[y == c].mean(axis=0) for c in present])
    mu_g = x.mean(axis=0) if how == "weighted" else means.mean(axis=0)
    out = {
        "mean_norm_means": float(np.mean([np.linalg.norm(m - mu_g) for m in means])),
        "mean_norm_features": float(np.mean([np.linalg.norm(h - mu_g) for h in x])),
    }
    if w is not None:
        out["mean_norm_weights"] = float(np.mean([np.linalg.norm(row) for row in w]))
        out["norm_ratio"] = out["mean_norm_weights"] / out["mean_norm_means"]
    return out


@pytest.mark.parametrize("route", ["class_span", "dxd"])
@pytest.mark.parametrize("how", ["weighted", "unweighted"])
def test_norms_match_the_naive_computation(how: str, route: str) -> None:
    x, y, w, b = classes(1)
    options = AnalysisOptions(global_mean=how, nc1_route=route)
    r = analyze_arrays(x, w, b, labels=y, options=options)
    want = naive_norms(x, y, w, how)
    for key in NORMS:
        assert r.metrics[key] == pytest.approx(want[key], rel=1e-12), key


def test_the_norms_scale_with_the_features_and_the_weights() -> None:
    x, y, w, b = classes(2)
    base = analyze_arrays(x, w, b, labels=y).metrics
    scaled = analyze_arrays(3.0 * x, 0.5 * w, b, labels=y).metrics
    assert scaled["mean_norm_means"] == pytest.approx(3.0 * base["mean_norm_means"], rel=1e-12)
    assert scaled["mean_norm_features"] == pytest.approx(3.0 * base["mean_norm_features"])
    assert scaled["mean_norm_weights"] == pytest.approx(0.5 * base["mean_norm_weights"])
    assert scaled["norm_ratio"] == pytest.approx(base["norm_ratio"] / 6.0, rel=1e-12)


@pytest.mark.parametrize("chunk_rows", [1, 5, 33])
def test_mean_norm_features_does_not_depend_on_the_chunk_size(chunk_rows: int) -> None:
    x, y, w, b = classes(3)
    whole = analyze_arrays(x, w, b, labels=y).metrics["mean_norm_features"]
    split = analyze_arrays(x, w, b, labels=y, options=AnalysisOptions(chunk_rows=chunk_rows))
    assert split.metrics["mean_norm_features"] == pytest.approx(whole, rel=1e-13)


def test_without_a_head_the_weight_norms_are_null_and_the_rest_defined() -> None:
    x, y, w, _ = classes(4)
    moments = ClassMoments.from_batch(x, y, 4)
    scatter = ClassScatter.from_batch(plan_scatter(moments, None, None), x, y)
    out = classification_metrics(moments, scatter, None)
    want = naive_norms(x, y, None, "weighted")
    for key in ("mean_norm_means", "mean_norm_features"):
        assert out.metrics[key] == pytest.approx(want[key], rel=1e-12), key
    for key in ("mean_norm_weights", "norm_ratio"):
        assert math.isnan(out.metrics[key]) and out.info["undefined"][key] == NO_CLASSIFIER


def test_saved_statistics_have_no_per_row_distances() -> None:
    """A stats-only store keeps the init fields of pass 2's record: no `centre_distance`, so
    mean_norm_features is null with the reason; the other norms come from the sums."""
    x, y, w, b = classes(5)
    moments = ClassMoments.from_batch(x, y, 4)
    scatter = ClassScatter.from_batch(plan_scatter(moments, w, b), x, y)
    record = StatRecord.of(scatter, "shard")
    assert "centre_distance" not in record.fields
    restored = ClassScatter(**record.fields)
    out = classification_metrics(moments, restored, Head(w, b))
    assert math.isnan(out.metrics["mean_norm_features"])
    assert out.info["undefined"]["mean_norm_features"] == NO_ROWS
    want = naive_norms(x, y, w, "weighted")
    assert out.metrics["norm_ratio"] == pytest.approx(want["norm_ratio"], rel=1e-12)


def test_merged_blocks_sum_the_distances() -> None:
    x, y, w, b = classes(6)
    moments = ClassMoments.from_batch(x, y, 4)
    plan = plan_scatter(moments, w, b, global_mean="unweighted")
    parts = [ClassScatter.from_batch(plan, x[i : i + 17], y[i : i + 17]) for i in (34, 0, 17)]
    parts.append(ClassScatter.from_batch(plan, x[51:], y[51:]))
    merged = parts[0].merge(parts[1]).merge(parts[2].merge(parts[3]))
    mu_g = np.array([x[y == c].mean(axis=0) for c in range(4)]).mean(axis=0)
    assert merged.centre_distance == pytest.approx(
        math.fsum(np.linalg.norm(h - mu_g) for h in x), rel=1e-13
    )


def test_all_means_equal_leave_norm_ratio_null() -> None:
    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(3), 10)
    x = rng.normal(size=(30, 4))
    for c in range(3):  # the same class mean for every class
        x[y == c] += np.array([1.0, 2.0, 3.0, 4.0]) - x[y == c].mean(axis=0)
    r = analyze_arrays(x, rng.normal(size=(3, 4)), None, labels=y)
    assert r.metrics["mean_norm_means"] == 0.0
    assert math.isnan(r.metrics["norm_ratio"])
    assert "norm_ratio" in r.info["undefined"]


# --------------------------------------------------------------------------------------------
# regression: evr_j and nrc1_at_k


def regression(seed: int, n: int, d: int, t: int) -> tuple[np.ndarray, ...]:
    """Features with a decaying spectrum and a common offset (so the uncentred unit rows differ
    from the centred ones), targets with a non-zero mean, a random head."""
    rng = np.random.default_rng(seed)
    scales = 2.0 ** -np.arange(d, dtype=float)
    x = rng.normal(size=(n, d)) * scales @ np.linalg.qr(rng.normal(size=(d, d)))[0] + 0.3
    w = rng.normal(size=(t, d))
    y = x @ w.T + 0.1 * rng.normal(size=(n, t)) + rng.normal(size=t) * 3.0
    return x, y, w, rng.normal(size=t)


def naive_components(x: np.ndarray, m: int) -> tuple[list[float], list[float]]:
    """(evr_1..evr_m, nrc1_at_1..nrc1_at_m): eigenvalues of the centred covariance over its
    trace, and the mean squared distance of the unit rows h_i / ||h_i|| to the top-k span."""
    c = x - x.mean(axis=0)
    cov = c.T @ c / x.shape[0]
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    shares = [float(v / np.trace(cov)) for v in vals[:m]]
    unit = x / np.linalg.norm(x, axis=1)[:, None]
    at_k = []
    for k in range(1, m + 1):
        p = vecs[:, :k] @ vecs[:, :k].T
        at_k.append(float(np.mean([np.sum((u - p @ u) ** 2) for u in unit])))
    return shares, at_k


def run(x, y, w, b, **options):
    return analyze_arrays(x, w, b, targets=y, options=AnalysisOptions(**options))


@pytest.mark.parametrize(("d", "t"), [(6, 2), (10, 3), (14, 3), (80, 2)])  # 80: partial eigh
def test_per_component_keys_match_the_naive_computation(d: int, t: int) -> None:
    x, y, w, b = regression(d, 300, d, t)
    r = run(x, y, w, b)
    m = min(d, 10)
    shares, at_k = naive_components(x, m)
    for j in range(m):
        assert r.metrics[EVR[j]] == pytest.approx(shares[j], rel=1e-9, abs=1e-15), EVR[j]
        assert r.metrics[AT_K[j]] == pytest.approx(at_k[j], rel=1e-8, abs=1e-12), AT_K[j]
    assert sum(r.metrics[key] for key in EVR[:t]) == pytest.approx(r.metrics["evr"], rel=1e-12)
    assert r.metrics[f"nrc1_at_{t}"] == pytest.approx(r.metrics["nrc1"], rel=1e-12)
    assert all(r.metrics[AT_K[k]] >= r.metrics[AT_K[k + 1]] - 1e-12 for k in range(m - 1))


def test_evr_j_sum_to_one_when_every_component_is_kept() -> None:
    x, y, w, b = regression(1, 200, 7, 2)
    r = run(x, y, w, b)
    assert sum(r.metrics[key] for key in EVR[:7]) == pytest.approx(1.0, rel=1e-12)
    assert r.metrics["nrc1_at_7"] == pytest.approx(0.0, abs=1e-12)  # the whole space


def test_keys_beyond_d_are_null_with_the_reason() -> None:
    x, y, w, b = regression(2, 120, 4, 2)
    r = run(x, y, w, b)
    beyond = EVR[4:] + AT_K[4:]
    for key in beyond:
        assert math.isnan(r.metrics[key]), key
        assert r.info["undefined"][key] == "the features have only D = 4 principal components"
    assert sum("only D = 4" in warning for warning in r.warnings) == 1  # one line for all
    assert all(math.isfinite(r.metrics[key]) for key in EVR[:4] + AT_K[:4])


@pytest.mark.parametrize("chunk_rows", [1, 13, 64])
def test_per_component_keys_do_not_depend_on_the_chunk_size(chunk_rows: int) -> None:
    x, y, w, b = regression(3, 150, 12, 3)
    whole, split = run(x, y, w, b).metrics, run(x, y, w, b, chunk_rows=chunk_rows).metrics
    for key in EVR + AT_K:
        assert split[key] == pytest.approx(whole[key], rel=1e-10, abs=1e-14), key


def test_statistics_projected_on_fewer_directions_leave_the_rest_null() -> None:
    """Pass-2 statistics saved before these keys projected on the top T directions and W's rows
    only: nrc1_at_k for k <= T are still right, the others null with the reason."""
    x, y, w, b = regression(4, 200, 9, 2)
    moments = RegressionMoments.from_batch(x, y, x @ w.T + b, unit_rows=False)
    spaces = Subspaces.of(moments, w)
    old, _ = np.linalg.qr(np.concatenate([spaces.pca, spaces.row_space], axis=1))
    new = spaces.joint_basis()
    head = Head(w, b)

    def metrics(basis: np.ndarray) -> MetricSet:
        plain, centred = UnitProjections.pair_from_batch(x, basis, moments.feature_mean)
        return metrics_from_subspaces(moments, spaces, plain, centred, head, None)

    full, saved = metrics(new).metrics, metrics(old)
    partial = saved.metrics
    _, at_k = naive_components(x, 9)
    for k in range(9):
        assert full[AT_K[k]] == pytest.approx(at_k[k], rel=1e-8, abs=1e-12)
    assert partial[AT_K[0]] == pytest.approx(at_k[0], rel=1e-8)
    assert partial[AT_K[1]] == pytest.approx(at_k[1], rel=1e-8)
    assert all(math.isnan(partial[key]) for key in AT_K[2:9])
    assert all(saved.info["undefined"][key] == UNCOVERED for key in AT_K[2:9])
    assert partial["nrc1"] == pytest.approx(full["nrc1"], rel=1e-10)


def test_headless_regression_has_the_per_component_keys() -> None:
    x, y, _, _ = regression(5, 100, 6, 2)
    source = ArraySource(
        path="<arrays>",
        task="regression",
        n=100,
        d=6,
        head=None,
        has_outputs=False,
        features=x,
        targets=y,
        width_without_head=2,
    )
    r = analyze_source(source)
    shares, at_k = naive_components(x, 6)
    for j in range(6):
        assert r.metrics[EVR[j]] == pytest.approx(shares[j], rel=1e-9, abs=1e-15)
        assert r.metrics[AT_K[j]] == pytest.approx(at_k[j], rel=1e-8, abs=1e-12)


# --------------------------------------------------------------------------------------------
# nrc3 with the uncentred target covariance


def naive_nrc3(w: np.ndarray, sigma: np.ndarray, gamma: float) -> float:
    vals, vecs = np.linalg.eigh(sigma)
    a = vecs @ np.diag(np.sqrt(np.clip(vals, 0, None)) - math.sqrt(gamma)) @ vecs.T
    ww = w @ w.T
    return float(np.sum((ww / np.linalg.norm(ww) - a / np.linalg.norm(a)) ** 2))


def test_uncentred_target_covariance_against_a_naive_computation() -> None:
    x, y, w, b = regression(6, 250, 8, 3)
    second = y.T @ y / y.shape[0]  # (1/N) sum_i y_i y_i^T
    centred = np.cov(y.T, bias=True)
    gamma = 0.2 * float(np.linalg.eigvalsh(centred).min())
    for how, sigma in (("uncentred", second), ("centred", centred)):
        r = run(x, y, w, b, target_cov=how, gamma=gamma)
        assert r.info["target_cov"] == how
        assert r.metrics["nrc3"] == pytest.approx(naive_nrc3(w, sigma, gamma), rel=1e-10)
        assert r.info["lambda_min"] == pytest.approx(np.linalg.eigvalsh(sigma).min(), rel=1e-10)
    # the test can tell them apart: the targets' mean is far from zero
    assert abs(naive_nrc3(w, second, gamma) - naive_nrc3(w, centred, gamma)) > 1e-3


def test_uncentred_equals_centred_for_zero_mean_targets() -> None:
    x, y, w, b = regression(7, 200, 6, 2)
    y = y - y.mean(axis=0)
    a = run(x, y, w, b, target_cov="uncentred").metrics
    c = run(x, y, w, b, target_cov="centred").metrics
    for key in ("nrc3", "nrc3_gamma", "nrc3_gamma_ratio"):
        assert a[key] == pytest.approx(c[key], rel=1e-9, abs=1e-12), key


def test_the_searched_gamma_uses_the_uncentred_covariance() -> None:
    x, y, w, b = regression(8, 200, 6, 3)
    r = run(x, y, w, b, target_cov="uncentred")
    second = y.T @ y / y.shape[0]
    lam_min = float(np.linalg.eigvalsh(second).min())
    gammas = np.linspace(0.0, lam_min, 4001)
    best = min(naive_nrc3(w, second, g) for g in gammas)
    assert 0.0 <= r.metrics["nrc3_gamma"] <= lam_min * (1 + 1e-12)
    assert r.metrics["nrc3"] <= best + 1e-12
    assert r.metrics["nrc3"] == pytest.approx(best, rel=1e-6, abs=1e-12)


def test_a_run_holds_its_gamma_on_the_uncentred_covariance() -> None:
    x, y, w, b = regression(9, 200, 6, 3)
    rng = np.random.default_rng(0)
    early = run(x, y, w + 0.3 * rng.normal(size=w.shape), b, target_cov="uncentred")
    final = run(x, y, w, b, target_cov="uncentred")
    early_w = early.extras["weight"]
    apply_run_gamma([early, final])
    g = final.metrics["nrc3_gamma"]
    assert early.info["nrc3_gamma_source"] == "final_checkpoint"
    second = y.T @ y / y.shape[0]
    assert early.metrics["nrc3"] == pytest.approx(naive_nrc3(early_w, second, g), rel=1e-10)
    np.testing.assert_allclose(final.extras["target_cov"], np.cov(y.T, bias=True), rtol=1e-12)


def test_an_unknown_target_covariance_is_one_usage_error() -> None:
    x, y, w, b = regression(10, 50, 4, 2)
    with pytest.raises(UsageError, match="--target-cov: found 'raw'; expected one of"):
        run(x, y, w, b, target_cov="raw")
