"""The calibration keys (`metrics.calibration`) against naive loops written here, torchmetrics'
calibration error, a brute-force temperature grid and perfectly calibrated synthetic data; and
the accumulators' merge, in any order and any chunking, against one pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncinspect.metrics.calibration import (
    GRID_TEMPERATURES,
    T_BOUNDS,
    CalibrationStats,
    ConfidenceBins,
    calibration_metrics,
    fit_temperature,
    lowest_ece_temperature,
    nll_derivatives,
    on_bound,
)
from tests.helpers.oracle_calibration import (
    in_bin,
    naive_bin_error,
    naive_keys,
    naive_mean_nll,
    naive_nll_at,
    naive_probabilities,
    naive_top,
)

KEYS = ("ece", "mce", "adaece", "cw_ece", "nll", "brier")


# --- data ---------------------------------------------------------------------------------------


def edge_logits(seed: int, n: int = 240, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Random logits, with rows whose softmax lands exactly on bin edges: all equal (p = 1/5,
    an edge of 15 and of 10 bins), two tied maxima (p = 1/2, an edge of 10 bins; the label
    sometimes the second: wrong by the tie rule), a saturated row (p = 1.0 exactly, and exact
    zeros), and duplicated rows (ties in adaece's sort, right and wrong)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, k))
    y = rng.integers(0, k, size=n)
    z[:20] = 0.7  # every p = 1/5
    z[20:40] = -1000.0
    z[20:40, 1:3] = 3.0  # p = (0, 1/2, 1/2, 0, 0)
    y[20:30] = 2  # the tie goes to class 1: wrong
    z[40:70] = -1000.0
    z[40:70, 3] = 0.0  # p = (0, 0, 0, 1, 0): conf = 1.0
    y[40:55] = 3
    y[55:70] = 0  # conf 1.0, wrong
    z[70:90] = z[90]  # duplicates of one row with both labels
    y[70:80] = np.argmax(z[90])
    return z, y


def test_edge_rows_land_on_the_edges() -> None:
    """The fixture's premise: the confidences equal the correctly rounded edges j/M."""
    z, y = edge_logits(0)
    p = naive_probabilities(z)
    assert np.all(p[:20] == 3 / 15) and np.all(p[:20] == 2 / 10)
    assert np.all(p[20:40, 1:3] == 5 / 10)
    assert np.all(p[40:70].max(axis=1) == 1.0) and np.sum(p[40:70] == 0.0) == 30 * 4


@pytest.mark.parametrize("bins", [15, 10, 1, 7])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_key_equals_the_naive_loops(bins: int, seed: int) -> None:
    z, y = edge_logits(seed)
    got = calibration_metrics(CalibrationStats.from_logits(z, y, bins))
    expected = naive_keys(z, y, bins)
    assert list(got) == list(KEYS)
    for key in KEYS:
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-14), key


def test_fewer_samples_than_bins_leave_bins_empty() -> None:
    """N < M: the empty equal-width and equal-mass bins add nothing."""
    z, y = edge_logits(2, n=240)
    z, y = z[85:95], y[85:95]
    got = calibration_metrics(CalibrationStats.from_logits(z, y, 15))
    expected = naive_keys(z, y, 15)
    for key in KEYS:
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-14), key


def test_known_values() -> None:
    """Two samples, K = 2: p = (0.5, 0.5) labelled 0 (right by the tie rule) and a saturated
    p = (1, 0) labelled 1 (wrong). ece = (1/2)|1 - 0.5| + (1/2)|0 - 1| = 0.75, mce = 1,
    nll = (log 2 + 1000) / 2, brier = (0.25 + 0.25 + 1 + 1) / 2 = 1.25."""
    z = np.array([[0.0, 0.0], [0.0, -1000.0]])
    y = np.array([0, 1])
    got = calibration_metrics(CalibrationStats.from_logits(z, y, 15))
    assert got["ece"] == 0.75 and got["mce"] == 1.0 and got["adaece"] == 0.75
    assert got["nll"] == pytest.approx((math.log(2) + 1000) / 2, rel=1e-15)
    assert got["brier"] == 1.25
    # class-wise: class 0 has p = 0.5 (label 0) and 1.0 (label 1); class 1 has 0.5 (label 0)
    # and 0.0 (label 1): per class (1/2)|1 - 0.5| + (1/2)|0 - 1| and (1/2)|0 - .5| + (1/2)|1 - 0|
    assert got["cw_ece"] == pytest.approx((0.75 + 0.75) / 2)


def test_perfect_confident_predictions_are_calibrated() -> None:
    z = np.full((50, 4), -1000.0)
    y = np.arange(50) % 4
    z[np.arange(50), y] = 0.0
    got = calibration_metrics(CalibrationStats.from_logits(z, y, 15))
    assert got["ece"] == got["mce"] == got["adaece"] == got["cw_ece"] == got["brier"] == 0.0
    assert got["nll"] == 0.0


def test_ece_and_mce_equal_torchmetrics() -> None:
    """torchmetrics' top-label calibration error (norm l1 = ece, max = mce) on data where the
    definitions coincide: no confidence at 1.0 (torchmetrics gives 1.0 a bin of its own) and none
    within float32 rounding of an edge (torchmetrics bins float32 confidences)."""
    import torch
    import torchmetrics.functional.classification as tm

    rng = np.random.default_rng(7)
    n, k = 3000, 6
    z = rng.normal(scale=1.5, size=(n, k))
    y = rng.integers(0, k, size=n)
    p = naive_probabilities(z)
    conf = p.max(axis=1)
    for bins in (15, 10, 4):
        edges = np.arange(bins + 1) / bins
        assert np.min(np.abs(conf[:, None] - edges[None, :])) > 1e-6 and conf.max() < 1.0
        got = calibration_metrics(CalibrationStats.from_logits(z, y, bins))
        preds, target = torch.from_numpy(p), torch.from_numpy(y)
        l1 = tm.multiclass_calibration_error(preds, target, num_classes=k, n_bins=bins)
        top = tm.multiclass_calibration_error(preds, target, num_classes=k, n_bins=bins, norm="max")
        assert got["ece"] == pytest.approx(float(l1), rel=1e-5, abs=1e-6), bins
        assert got["mce"] == pytest.approx(float(top), rel=1e-5, abs=1e-6), bins


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merging_chunks_in_any_order_equals_one_pass(seed: int) -> None:
    rng = np.random.default_rng(seed)
    z, y = edge_logits(seed, n=400, k=7)
    order = rng.permutation(len(y))  # the rows in another order: adaece's ties must not care
    z, y = z[order], y[order]
    whole = calibration_metrics(CalibrationStats.from_logits(z, y, 15))
    cuts = np.sort(rng.choice(np.arange(1, len(y)), size=9, replace=False))
    chunks = [
        CalibrationStats.from_logits(zc, yc, 15)
        for zc, yc in zip(np.split(z, cuts), np.split(y, cuts), strict=True)
    ]
    total = CalibrationStats.empty(7, 15)
    for i in rng.permutation(len(chunks)):
        total = chunks[i].merge(total) if i % 2 else total.merge(chunks[i])
    assert total.scores.n == len(y)
    merged = calibration_metrics(total)
    for key in KEYS:
        assert merged[key] == pytest.approx(whole[key], rel=1e-12, abs=1e-15), key
    assert merged["adaece"] == whole["adaece"]  # the same sorted samples, bit for bit


def calibrated_data(seed: int, n: int, k: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z): calibrated at T = 1 by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=scale, size=(n, k))
    p = naive_probabilities(z)
    u = rng.random(n)[:, None]
    y = np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1), k - 1)
    return z, y


@pytest.mark.parametrize("beta", [0.05, 0.7, 3.0, 20.0])
def test_nll_derivatives_are_the_naive_ones_and_the_finite_differences(beta: float) -> None:
    z, y = calibrated_data(6, 300, 5, 2.0)
    nll, grad, curvature = nll_derivatives(z, y, beta)
    naive = naive_nll_at(z, y)(beta)
    assert (nll / len(y), grad / len(y), curvature / len(y)) == pytest.approx(naive, rel=1e-9)
    step = 1e-4 * beta
    up, down = naive_mean_nll(z, y, 1 / (beta + step)), naive_mean_nll(z, y, 1 / (beta - step))
    assert grad / len(y) == pytest.approx((up - down) / (2 * step), rel=1e-5)


def test_calibrated_data_fit_temperature_one_and_small_ece() -> None:
    z, y = calibrated_data(3, 20000, 10, 2.0)
    temperature = fit_temperature(naive_nll_at(z, y))
    assert temperature == pytest.approx(1.0, abs=0.05)
    got = calibration_metrics(CalibrationStats.from_logits(z, y, 15))
    assert got["ece"] < 0.02


@pytest.mark.parametrize(("scale", "expected"), [(3.0, 3.0), (0.25, 0.25)])
def test_temperature_equals_the_brute_force_grid(scale: float, expected: float) -> None:
    """Logits scaled by s after the labels were drawn: the NLL-optimal temperature is near s.
    It equals the argmin of 2000 log-spaced temperatures on [0.05, 20] within one step."""
    z, y = calibrated_data(4, 4000, 5, 1.5)
    z = z * scale
    temperature = fit_temperature(naive_nll_at(z, y))
    grid = np.geomspace(*T_BOUNDS, 2000)
    best = grid[int(np.argmin([naive_mean_nll(z, y, t) for t in grid]))]
    step = math.log(grid[1] / grid[0])
    assert abs(math.log(temperature / best)) <= step
    assert temperature == pytest.approx(expected, rel=0.1)
    # a local minimum to the tolerance: 1e-5 relative either side is no lower
    at = naive_mean_nll(z, y, temperature)
    for nearby in (temperature * (1 - 1e-5), temperature * (1 + 1e-5)):
        assert naive_mean_nll(z, y, nearby) >= at - 1e-13


def test_temperature_stops_at_the_bound_when_nll_keeps_falling() -> None:
    """Every prediction right with a margin: the NLL falls as T -> 0, so T = 0.05."""
    z = np.full((40, 3), 0.0)
    y = np.arange(40) % 3
    z[np.arange(40), y] = 1.0
    temperature = fit_temperature(naive_nll_at(z, y))
    assert temperature == pytest.approx(T_BOUNDS[0], rel=1e-5)


def test_a_flat_nll_towards_the_bound_gives_the_bound() -> None:
    """A margin of 10: below T of about 0.5 the NLL rounds to 0, flat, and the search could stop
    anywhere on that stretch. The naive NLL at the bound is no larger than anywhere in
    [0.05, 0.5], so the fit is the bound itself (what `on_bound` reports), not a point of it."""
    z = np.zeros((60, 4))
    y = np.arange(60) % 4
    z[np.arange(60), y] = 10.0
    nll = [naive_mean_nll(z, y, t) for t in np.geomspace(T_BOUNDS[0], 0.5, 50)]
    assert max(nll) < 1e-8 and nll[0] <= min(nll)  # flat (to rounding) and lowest at the end
    temperature = fit_temperature(naive_nll_at(z, y))
    assert temperature == T_BOUNDS[0] and on_bound(temperature)


@pytest.mark.parametrize("scale", [0.06, 0.5, 1.0, 3.0, 19.0])
def test_the_fit_takes_few_passes(scale: float) -> None:
    """Each call of `at` is a pass over the logits: at most 9 for an interior optimum (Brent's
    method took 11 to 16), 2 when the NLL keeps falling to an end (it took about 36)."""
    z, y = calibrated_data(4, 2000, 5, 1.5)
    calls: list[float] = []
    naive = naive_nll_at(z * scale, y)

    def at(beta: float) -> tuple[float, float, float]:
        calls.append(beta)
        return naive(beta)

    fit_temperature(at)
    assert len(calls) <= 9
    perfect = np.zeros((40, 3))
    perfect[np.arange(40), np.arange(40) % 3] = 1.0
    calls.clear()
    bound_at = naive_nll_at(perfect, np.arange(40) % 3)
    assert fit_temperature(lambda b: (calls.append(b), bound_at(b))[1]) == T_BOUNDS[0]
    assert len(calls) == 2


def test_grid_temperature_is_the_lowest_naive_ece() -> None:
    z, y = calibrated_data(5, 1500, 4, 1.0)
    z = z * 2.5
    n = len(y)
    histograms = [ConfidenceBins.at_temperature(z, y, 15, t) for t in GRID_TEMPERATURES]
    temperature, ece = lowest_ece_temperature(GRID_TEMPERATURES, histograms, n)
    naive = []
    for t in GRID_TEMPERATURES:
        conf, correct = naive_top(naive_probabilities(z, t), y)
        pairs = list(zip(conf, correct, strict=True))
        naive.append(
            naive_bin_error([[q for q in pairs if in_bin(q[0], j, 15)] for j in range(15)], n)[0]
        )
    best = int(np.argmin(naive))
    assert temperature == GRID_TEMPERATURES[best] and ece == pytest.approx(naive[best], rel=1e-12)
    assert GRID_TEMPERATURES[0] == 0.1 and GRID_TEMPERATURES[-1] == 10.0
    assert len(GRID_TEMPERATURES) == 100
