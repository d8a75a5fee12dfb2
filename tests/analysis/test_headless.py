"""Sources without a head: the head-free metrics as with one (they never read W), every key that
needs the head NaN with its reason, accuracy from stored logits, and the later stages (the NRC3
gamma protocol, the UFM distance) skipping such results."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.passes import analyze_source
from ncinspect.analysis.regression import apply_run_gamma
from ncinspect.io.sources import ArraySource
from ncinspect.metrics.head import Head
from ncinspect.metrics.results import Result
from ncinspect.ufm.distance import NO_HEAD, UfmSettings, ufm_distance
from tests.helpers.synth import classification_set, regression_source

HEAD_FREE = (
    "nc1",
    "nc1_cdnv",
    "nc2_equinorm_means",
    "nc2_equiangle_means",
    "nc2_maxangle_means",
    "nc2_etf_means",
    "mean_norm_means",
    "mean_norm_features",
)
NEEDS_W = (
    "nc2_equinorm_weights",
    "nc2_equiangle_weights",
    "nc2_maxangle_weights",
    "nc2_etf_weights",
    "nc3",
    "nc3_etf",
    "nc4",
    "accuracy",
    "bias_gap",
    "mean_norm_weights",
    "norm_ratio",
    "unc3",
)
NO_CLASSIFIER = "needs the classifier head (weight); the dump has none"


def _classification(
    x: np.ndarray,
    y: np.ndarray,
    head: Head | None,
    outputs: np.ndarray | None = None,
    k: int | None = None,
) -> ArraySource:
    return ArraySource(
        path="<test>",
        task="classification",
        n=x.shape[0],
        d=x.shape[1],
        head=head,
        has_outputs=outputs is not None,
        origin="npz",
        width_without_head=None if head is not None else (k or int(y.max()) + 1),
        features=x,
        labels=y,
        outputs=outputs,
    )


def naive_nc1(x: np.ndarray, y: np.ndarray) -> float:
    """tr(Sigma_W pinv(Sigma_B)) / K straight from the definition (every class present)."""
    classes = np.unique(y)
    mu_g = x.mean(axis=0)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    dev = x - means[np.searchsorted(classes, y)]
    sigma_w = dev.T @ dev / x.shape[0]
    mc = means - mu_g
    sigma_b = mc.T @ mc / classes.size
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-10))) / classes.size


@pytest.mark.parametrize("route", ["class_span", "dxd"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_head_free_metrics_do_not_depend_on_the_head(seed: int, route: str) -> None:
    rng = np.random.default_rng(seed)
    x, y, w, b = classification_set(rng, 6, 9, 300)
    options = AnalysisOptions(nc1_route=route)
    without = analyze_source(_classification(x, y, None), options)
    for head in (Head(w, b), Head(rng.normal(size=w.shape) * 5.0, None)):
        with_head = analyze_source(_classification(x, y, head), options)
        for key in HEAD_FREE:
            assert without.metrics[key] == pytest.approx(with_head.metrics[key], rel=1e-12), key
    assert without.metrics["nc1"] == pytest.approx(naive_nc1(x, y), rel=1e-9)


def test_keys_that_need_the_head_are_nan_with_the_reason() -> None:
    x, y, _, _ = classification_set(np.random.default_rng(4), 5, 8, 200)
    result = analyze_source(_classification(x, y, None))
    for key in NEEDS_W:
        assert math.isnan(result.metrics[key]), key
        assert result.info["undefined"][key] == NO_CLASSIFIER
    assert all(math.isfinite(result.metrics[key]) for key in HEAD_FREE)
    assert result.warnings == [
        f"{', '.join(NEEDS_W)} are undefined: {NO_CLASSIFIER}",
    ]
    assert result.to_json()["metrics"]["bias_gap"] is None
    assert result.k == 5


def test_accuracy_comes_from_the_stored_logits_without_a_head() -> None:
    rng = np.random.default_rng(5)
    x, y, w, b = classification_set(rng, 4, 6, 120, noise=3.0)
    logits = x @ w.T + b
    logits[:3] = np.nan  # rows with a non-finite logit count as wrong
    result = analyze_source(_classification(x, y, None, outputs=logits))
    right = (np.argmax(np.nan_to_num(logits, nan=-np.inf), axis=1) == y)[3:]
    assert result.metrics["accuracy"] == int(right.sum()) / x.shape[0]
    assert result.info["accuracy_from"] == "outputs (the argmax of the stored logits)"
    assert "accuracy" not in result.info["undefined"]
    assert math.isnan(result.metrics["nc4"])


def test_empty_classes_without_a_head_follow_the_k_eff_rule() -> None:
    x, y, _, _ = classification_set(np.random.default_rng(6), 3, 5, 90)
    y = np.where(y == 1, 3, y)  # classes 0, 2, 3: K = 4, class 1 empty
    result = analyze_source(_classification(x, y, None))
    assert (result.k, result.info["k_eff"], result.info["empty_classes"]) == (4, 3, [1])
    assert "1 of 4 classes have no samples (classes 1); mean-based metrics use K_eff = 3" in (
        result.warnings
    )
    assert result.metrics["nc1"] == pytest.approx(naive_nc1(x, y), rel=1e-9)


# --- regression ---------------------------------------------------------------------------------


def _regression_pair(outputs: np.ndarray | None = None) -> tuple[Result, Result, np.ndarray]:
    rng = np.random.default_rng(8)
    x = rng.normal(size=(150, 7))
    w = rng.normal(size=(2, 7))
    y = x @ w.T + 0.3 * rng.normal(size=(150, 2))
    headed = analyze_source(regression_source(x, y, w, None, outputs))
    source = regression_source(x, y, w, None, outputs)
    source.head, source.width_without_head = None, 2
    return headed, analyze_source(source), y


def test_regression_without_a_head_keeps_nrc1_and_evr() -> None:
    headed, headless, _ = _regression_pair()
    for key in ("nrc1", "nrc1_centered", "evr"):
        assert headless.metrics[key] == pytest.approx(headed.metrics[key], rel=1e-12), key
    reason = "needs the regression head (weight); the dump has none"
    for key in ("nrc2", "nrc2_centered", "nrc3", "nrc3_gamma", "nrc3_gamma_ratio"):
        assert math.isnan(headless.metrics[key]) and headless.info["undefined"][key] == reason
    for key in ("mse", "r2"):
        assert math.isnan(headless.metrics[key])
        assert headless.info["undefined"][key].startswith("needs predictions")
    assert headless.info["predictions"] == "none"


def test_regression_without_a_head_fits_its_stored_outputs() -> None:
    rng = np.random.default_rng(9)
    outputs = rng.normal(size=(150, 2))
    _, headless, y = _regression_pair(outputs)
    naive_mse = float(((y - outputs) ** 2).mean())
    naive_r2 = 1.0 - float(((y - outputs) ** 2).sum()) / float(((y - y.mean(axis=0)) ** 2).sum())
    assert headless.metrics["mse"] == pytest.approx(naive_mse, rel=1e-12)
    assert headless.metrics["r2"] == pytest.approx(naive_r2, rel=1e-12)


def test_gamma_protocol_leaves_results_without_a_head_out() -> None:
    headed, headless, _ = _regression_pair()
    own = headed.metrics["nrc3"]
    headed.checkpoint, headless.checkpoint = "ep1", "ep9"
    apply_run_gamma([headed, headless])  # the final checkpoint has no head
    assert headed.metrics["nrc3"] == own
    assert headed.info["nrc3_gamma_source"] == "searched"
    assert headed.warnings[-1] == (
        "nrc3: the final checkpoint ep9 has no head (so no gamma); this checkpoint keeps its own"
    )
    apply_run_gamma([headless, headed])  # an earlier checkpoint without a head: untouched
    assert "nrc3_gamma_source" not in headless.info and math.isnan(headless.metrics["nrc3"])


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_ufm_distance_is_not_computed_without_a_head(task: str) -> None:
    if task == "classification":
        x, y, _, _ = classification_set(np.random.default_rng(2), 3, 4, 60)
        result = analyze_source(_classification(x, y, None))
    else:
        result = _regression_pair()[1]
    settings = UfmSettings(lambdas=(1e-3, 1e-3), n=20.0)
    assert ufm_distance(result, settings) is None
    assert result.info["ufm"] == NO_HEAD
