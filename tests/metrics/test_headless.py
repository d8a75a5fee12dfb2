"""The metric functions without a head: the head-free keys against the naive oracle (which needs
some W, but its head-free keys never read it), every other key NaN with its reason."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncinspect.metrics.classification import HEAD_KEYS, classification_metrics
from ncinspect.metrics.head import NO_CLASSIFIER
from ncinspect.metrics.keys import CLASSIFICATION_KEYS
from ncinspect.metrics.regression import Subspaces
from ncinspect.metrics.results import MetricSet
from ncinspect.stats.classification import ClassMoments, ClassScatter, plan_scatter
from ncinspect.stats.regression import RegressionMoments
from tests.helpers.oracle_nc import classification_oracle
from tests.metrics.test_classification import ROUTES, SHAPES, make_data


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("k", "d"), SHAPES, ids=[f"K{k}D{d}" for k, d in SHAPES])
def test_head_free_keys_match_the_oracle_without_a_head(k: int, d: int, route: str) -> None:
    x, y, w, b = make_data(3, k, d, empty=(1,))
    moments = ClassMoments.from_batch(x, y, k)
    plan = plan_scatter(moments, None, None, route)
    assert plan.logits is None and plan.ncc is not None  # the nearest mean needs no head
    scatter = ClassScatter.from_batch(plan, x, y)
    assert (scatter.correct, scatter.ncc_mismatch) == (0, 0)
    out = classification_metrics(moments, scatter, None)
    expected = classification_oracle(x, y, w, b).metrics
    assert list(out.metrics) == list(CLASSIFICATION_KEYS)
    for key in CLASSIFICATION_KEYS:
        if key in HEAD_KEYS:
            assert math.isnan(out.metrics[key]) and out.info["undefined"][key] == NO_CLASSIFIER
        else:
            assert out.metrics[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-12), key
    assert "etf_floor_weights" not in out.info  # no weights, no floor to warn about


def test_accuracy_from_the_outputs_count() -> None:
    x, y, _, _ = make_data(4, 4, 6)
    moments = ClassMoments.from_batch(x, y, 4)
    scatter = ClassScatter.from_batch(plan_scatter(moments, None, None), x, y)
    out = classification_metrics(moments, scatter, None, outputs_correct=y.size // 4)
    assert out.metrics["accuracy"] == (y.size // 4) / y.size
    assert "accuracy" not in out.info["undefined"]


def test_undefined_all_records_each_key_and_warns_once() -> None:
    out = MetricSet(metrics={"a": 1.0})
    out.undefined_all(("a", "b"), "no head")
    assert math.isnan(out.metrics["a"]) and math.isnan(out.metrics["b"])
    assert out.info["undefined"] == {"a": "no head", "b": "no head"}
    assert out.warnings == ["a, b are undefined: no head"]
    out.undefined_all(("c",), "other")
    assert out.warnings[-1] == "c is undefined: other"


def test_subspaces_without_a_head_have_an_empty_row_space() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 5))
    moments = RegressionMoments.from_batch(x, x[:, :2], x[:, :2])
    spaces = Subspaces.of(moments, None)
    assert spaces.row_space.shape == (5, 0)
    # the top min(D, 10) principal directions hold the top-T ones: here all 5
    assert spaces.joint_basis().shape == spaces.components.shape == (5, 5)
    assert Subspaces.of(moments, None) is spaces  # the cached answer for the same request
    assert Subspaces.of(moments, np.eye(2, 5)).row_space.shape == (5, 2)
