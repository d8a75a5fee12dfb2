"""The near-chance warning: a classification accuracy below 1/K + min(2/K, (1 - 1/K)/2)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncinspect.analysis.arrays import analyze_arrays
from ncinspect.analysis.classification import near_chance_threshold, warn_near_chance
from ncinspect.metrics.results import MetricSet
from tests.helpers.synth import simplex_etf_means


def _near_chance(warnings: list[str]) -> list[str]:
    return [w for w in warnings if "near chance" in w]


@pytest.mark.parametrize(
    ("k", "threshold"), [(2, 0.75), (3, 2 / 3), (4, 0.625), (5, 0.6), (10, 0.3), (100, 0.03)]
)
def test_threshold_is_chance_plus_the_documented_margin(k: int, threshold: float) -> None:
    assert near_chance_threshold(k) == pytest.approx(threshold, rel=1e-15)


def test_random_labels_warn_with_the_numbers() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16))
    y = rng.integers(0, 10, 2000)
    result = analyze_arrays(x, rng.normal(size=(10, 16)), labels=y)
    acc = result.metrics["accuracy"]
    assert acc < 0.2  # about 1/10
    assert _near_chance(result.warnings) == [
        f"accuracy {acc:.3f} is near chance (1/K = 0.100 for K = 10; warned below 0.300): check "
        "the input preprocessing (--normalize), the head, the split and whether the labels are "
        "shuffled"
    ]


def test_a_collapsed_geometry_does_not_warn() -> None:
    rng = np.random.default_rng(1)
    means = simplex_etf_means(rng, 10, 16)
    y = np.repeat(np.arange(10), 30)
    x = means[y] + 1e-3 * rng.normal(size=(300, 16))
    mc = means - means.mean(axis=0)
    result = analyze_arrays(x, mc, -mc @ means.mean(axis=0), labels=y)
    assert result.metrics["accuracy"] == 1.0
    assert _near_chance(result.warnings) == []


# Two classes, W = [[1, 0], [-1, 0]]: rows with x0 > 0 are predicted class 0, the others class 1.
X2 = np.array([[1.0, 0.0], [2.0, 0.5], [-1.0, 0.0], [-2.0, 1.0]])
W2 = np.array([[1.0, 0.0], [-1.0, 0.0]])


def test_two_classes_at_the_threshold_do_not_warn() -> None:
    result = analyze_arrays(X2, W2, labels=np.array([0, 0, 1, 0]))  # 3 of 4 right
    assert result.metrics["accuracy"] == 0.75
    assert _near_chance(result.warnings) == []


def test_two_classes_below_the_threshold_warn() -> None:
    result = analyze_arrays(X2, W2, labels=np.array([0, 1, 1, 0]))  # 2 of 4 right
    assert result.metrics["accuracy"] == 0.5
    assert _near_chance(result.warnings)[0].startswith(
        "accuracy 0.500 is near chance (1/K = 0.500 for K = 2; warned below 0.750)"
    )


@pytest.mark.parametrize(("accuracy", "warned"), [(0.7499, True), (0.75, False), (0.9, False)])
def test_boundary_for_two_classes(accuracy: float, warned: bool) -> None:
    metric_set = MetricSet(metrics={"accuracy": accuracy})
    warn_near_chance(metric_set, 2)
    assert bool(_near_chance(metric_set.warnings)) == warned


def test_an_undefined_accuracy_does_not_warn() -> None:
    metric_set = MetricSet(metrics={"accuracy": math.nan})
    warn_near_chance(metric_set, 10)
    assert metric_set.warnings == []
