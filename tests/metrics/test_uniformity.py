"""The K > D keys: hyperspherical energies of the hat class means (gnc2_log, gnc2_riesz) and
uniform duality (unc3), against closed forms on an exact simplex, and their edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncinspect.api import analyze_arrays
from ncinspect.metrics.results import MetricSet
from ncinspect.metrics.uniformity import (
    COINCIDENT,
    hyperspherical_energy,
    riesz_exponent,
    uniform_duality,
)


def simplex(k: int, d: int, seed: int = 0) -> np.ndarray:
    """K unit rows in D >= K - 1 dimensions with pairwise cosines -1/(K-1), summing to zero."""
    centre = np.eye(k) - 1.0 / k
    basis = np.linalg.svd(centre)[0][:, : k - 1]  # (K, K-1): the complement of 1
    coords = math.sqrt(k / (k - 1)) * centre @ basis  # (K, K-1), rows unit, cosines -1/(K-1)
    frame, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, k - 1)))
    return coords @ frame.T  # (K, D)


@pytest.mark.parametrize(("k", "d"), [(3, 2), (4, 3), (10, 9), (10, 30)])
def test_an_exact_simplex_has_the_closed_form_energies(k: int, d: int) -> None:
    mc = 2.5 * simplex(k, d)
    labels = np.repeat(np.arange(k), 4)
    result = analyze_arrays(mc[labels] + 1.0, weight=mc, labels=labels)
    dist2 = 2.0 * k / (k - 1)  # ||u_i - u_j||^2 = 2 - 2 (-1/(K-1))
    s = d - 2 if d > 2 else 1
    assert result.info["gnc2_riesz_s"] == s
    assert result.metrics["gnc2_log"] == pytest.approx(-0.5 * math.log(dist2), rel=1e-12)
    assert result.metrics["gnc2_riesz"] == pytest.approx(dist2 ** (-s / 2), rel=1e-12)
    assert result.metrics["unc3"] == pytest.approx(0.0, abs=1e-12)  # W = Mc: every cos is 1


def test_unc3_is_the_coefficient_of_variation_of_the_cosines() -> None:
    rng = np.random.default_rng(3)
    mc = rng.standard_normal((6, 4))
    w = mc + 0.7 * rng.standard_normal((6, 4))
    out = MetricSet()
    uniform_duality(w, mc, out)
    cos = [
        float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(w, mc, strict=True)
    ]
    assert out.metrics["unc3"] == pytest.approx(np.std(cos, ddof=1) / np.mean(cos), rel=1e-12)


def test_coinciding_hat_vectors_leave_the_energies_undefined() -> None:
    mc = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # 0 and 1 same direction
    out = MetricSet()
    hyperspherical_energy(mc, 3, out)
    for key in ("gnc2_log", "gnc2_riesz"):
        assert math.isnan(out.metrics[key]) and out.info["undefined"][key] == COINCIDENT


def test_a_riesz_mean_beyond_float64_is_undefined_with_its_log() -> None:
    """D = 800: s = 798; two hats 1e-3 apart give 1e-3^-798 = 1e2394, beyond float64."""
    mc = np.zeros((3, 800))
    mc[0, 0] = 1.0
    mc[1, 0], mc[1, 1] = math.cos(1e-3), math.sin(1e-3)
    mc[2, 2] = 1.0
    out = MetricSet()
    hyperspherical_energy(mc, 800, out)
    assert (
        math.isnan(out.metrics["gnc2_riesz"]) and "float64" in out.info["undefined"]["gnc2_riesz"]
    )
    # log of the mean of three terms, the largest ~ 798 * log(1 / 1e-3) = 5512.4
    assert out.info["gnc2_riesz_log"] == pytest.approx(798 * math.log(1e3) - math.log(3), rel=1e-6)
    assert math.isfinite(out.metrics["gnc2_log"])


def test_fewer_than_two_hat_vectors_and_the_exponent() -> None:
    out = MetricSet()
    hyperspherical_energy(np.zeros((4, 5)), 5, out)
    assert math.isnan(out.metrics["gnc2_log"]) and "at least 2" in out.info["undefined"]["gnc2_log"]
    assert [riesz_exponent(d) for d in (1, 2, 3, 768)] == [1, 1, 1, 766]
