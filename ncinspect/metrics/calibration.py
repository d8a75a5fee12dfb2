"""Calibration of a classifier's logits: streaming histograms that merge exactly, and the keys.

Owns the statistics the calibration keys are made of: the top-label confidence histogram
(`ConfidenceBins`), the class-wise one (`ClasswiseBins`), the confidences adaece sorts
(`ConfidenceList`: N floats, never the N x K probabilities), the proper-score sums (`ScoreSums`)
and their bundle `CalibrationStats` (`from_logits` on one block, `merge`); the key formulas
(`calibration_metrics`: ece, mce, adaece, cw_ece, nll, brier; `expected_error`); and the two
temperature choices (`fit_temperature` with `nll_derivatives`, the NLL-optimal T on [0.05, 20];
`lowest_ece_temperature`, the authors' grid variant). Definitions: docs/metrics.md,
"Calibration". Every key here is lower is better; the temperature is a parameter.

Pure functions of arrays: never reads files and never chooses rows (`analysis.calibration` does
both). Axes: N samples, B rows of a block, K classes, M bins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

T_BOUNDS = (0.05, 20.0)  # the NLL-optimal temperature is searched in this interval
T_RTOL = 1e-6  # its relative tolerance
GRID_TEMPERATURES: tuple[float, ...] = tuple(i / 10 for i in range(1, 101))  # 0.1, ..., 10.0


def bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    """The equal-width bin of each value in [0, 1]: j for j/M <= v < (j+1)/M, and the last bin
    M - 1 for v = 1. The edges are the correctly rounded j/M, so a value equal to one (say a
    softmax of three equal logits, 1/3 = 5/15) lands in the bin it opens."""
    edges = np.arange(bins + 1) / bins
    return np.minimum(np.searchsorted(edges, values, side="right") - 1, bins - 1)


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """p = softmax(z / T) row by row, for logits z (B, K): exp(s) / sum_k exp(s) with
    s = (z - max_k z) / T <= 0, so nothing overflows and equal logits give exactly 1/K."""
    e = z - z.max(axis=1, keepdims=True)
    if temperature != 1.0:
        e *= 1.0 / temperature
    np.exp(e, out=e)
    e /= e.sum(axis=1, keepdims=True)
    return e


def top_label(p: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(conf (B,), correct (B,) bool): the largest probability of each row and whether its
    argmax (ties to the lowest index) is the label."""
    pred = np.argmax(p, axis=1)
    return p[np.arange(p.shape[0]), pred], pred == labels


def nll_sum(z: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """sum_i -log softmax(z_i / T)_{y_i} over the block, as the stable log-softmax
    log sum_k exp(s_ik) - s_{i,y_i} with s = (z - max_k z) / T (the sum is at least 1)."""
    s = z - z.max(axis=1, keepdims=True)
    s_label = s[np.arange(z.shape[0]), labels]
    s *= 1.0 / temperature
    np.exp(s, out=s)
    return float(np.sum(np.log(s.sum(axis=1))) - np.sum(s_label) / temperature)


@dataclass(frozen=True)
class ConfidenceBins:
    """The top-label histogram over M equal-width bins: per bin the samples, the sum of their
    confidences and how many were classified correctly."""

    counts: np.ndarray  # (M,) int64
    confidence: np.ndarray  # (M,) float64: sum of conf_i in the bin
    correct: np.ndarray  # (M,) int64

    @classmethod
    def empty(cls, bins: int) -> ConfidenceBins:
        return cls(np.zeros(bins, np.int64), np.zeros(bins), np.zeros(bins, np.int64))

    @classmethod
    def from_confidences(cls, conf: np.ndarray, correct: np.ndarray, bins: int) -> ConfidenceBins:
        index = bin_index(conf, bins)
        return cls(
            counts=np.bincount(index, minlength=bins).astype(np.int64),
            confidence=np.bincount(index, weights=conf, minlength=bins),
            correct=np.bincount(index[correct], minlength=bins).astype(np.int64),
        )

    @classmethod
    def at_temperature(
        cls, z: np.ndarray, labels: np.ndarray, bins: int, temperature: float
    ) -> ConfidenceBins:
        """The histogram of the logits z (B, K) scaled by 1/T."""
        return cls.from_confidences(*top_label(softmax(z, temperature), labels), bins)

    def merge(self, other: ConfidenceBins) -> ConfidenceBins:
        return ConfidenceBins(
            self.counts + other.counts,
            self.confidence + other.confidence,
            self.correct + other.correct,
        )


@dataclass(frozen=True)
class ClasswiseBins:
    """Class-wise histograms: for every class k, the bins of p_ik over every sample i, with the
    sum of p_ik in each bin and how many of its samples have label k."""

    counts: np.ndarray  # (K, M) int64
    probability: np.ndarray  # (K, M) float64
    labelled: np.ndarray  # (K, M) int64

    @classmethod
    def empty(cls, k: int, bins: int) -> ClasswiseBins:
        zeros = np.zeros((k, bins), np.int64)
        return cls(zeros, np.zeros((k, bins)), zeros.copy())

    @classmethod
    def from_probabilities(cls, p: np.ndarray, labels: np.ndarray, bins: int) -> ClasswiseBins:
        k = p.shape[1]
        cell = bin_index(p, bins) + np.arange(k) * bins  # (B, K): the flat (class, bin) cell
        size = k * bins

        def count(index: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
            return np.bincount(index.ravel(), weights, minlength=size).reshape(k, bins)

        return cls(
            counts=count(cell).astype(np.int64),
            probability=count(cell, p.ravel()),
            labelled=count(cell[np.arange(p.shape[0]), labels]).astype(np.int64),
        )

    def merge(self, other: ClasswiseBins) -> ClasswiseBins:
        return ClasswiseBins(
            self.counts + other.counts,
            self.probability + other.probability,
            self.labelled + other.labelled,
        )


@dataclass(frozen=True)
class ConfidenceList:
    """Every sample's top-label confidence and correctness, kept for adaece's sort (N floats and
    N booleans; blocks are joined only when the value is computed)."""

    parts: tuple[tuple[np.ndarray, np.ndarray], ...] = ()

    def merge(self, other: ConfidenceList) -> ConfidenceList:
        return ConfidenceList(self.parts + other.parts)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros(0), np.zeros(0, bool)
        return (
            np.concatenate([conf for conf, _ in self.parts]),
            np.concatenate([correct for _, correct in self.parts]),
        )


@dataclass(frozen=True)
class ScoreSums:
    """Samples, and the sums over them of -log p_{i,y_i} and of sum_k (p_ik - [y_i = k])^2."""

    n: int = 0
    nll: float = 0.0
    brier: float = 0.0

    def merge(self, other: ScoreSums) -> ScoreSums:
        return ScoreSums(self.n + other.n, self.nll + other.nll, self.brier + other.brier)


@dataclass(frozen=True)
class CalibrationStats:
    """Everything the calibration keys at one temperature need, gathered block by block."""

    bins: ConfidenceBins
    classwise: ClasswiseBins
    confidences: ConfidenceList
    scores: ScoreSums

    @classmethod
    def empty(cls, k: int, bins: int) -> CalibrationStats:
        return cls(
            ConfidenceBins.empty(bins), ClasswiseBins.empty(k, bins), ConfidenceList(), ScoreSums()
        )

    @classmethod
    def from_logits(cls, z: np.ndarray, labels: np.ndarray, bins: int) -> CalibrationStats:
        """The statistics of one block: logits z (B, K) float64, all finite; labels (B,) in
        [0, K)."""
        p = softmax(z)
        conf, correct = top_label(p, labels)
        brier = np.einsum("ij,ij->i", p, p) - 2.0 * p[np.arange(z.shape[0]), labels] + 1.0
        scores = ScoreSums(int(z.shape[0]), nll_sum(z, labels, 1.0), float(brier.sum()))
        return cls(
            bins=ConfidenceBins.from_confidences(conf, correct, bins),
            classwise=ClasswiseBins.from_probabilities(p, labels, bins),
            confidences=ConfidenceList(((conf, correct),)),
            scores=scores,
        )

    def merge(self, other: CalibrationStats) -> CalibrationStats:
        return CalibrationStats(
            self.bins.merge(other.bins),
            self.classwise.merge(other.classwise),
            self.confidences.merge(other.confidences),
            self.scores.merge(other.scores),
        )


def expected_error(bins: ConfidenceBins, n: int) -> float:
    """sum_j (|B_j| / N) |acc(B_j) - conf(B_j)| = sum_j |correct_j - sum conf_j| / N (empty bins
    add nothing)."""
    return float(np.sum(np.abs(bins.correct - bins.confidence)) / n)


def maximum_error(bins: ConfidenceBins) -> float:
    """max over the non-empty bins of |acc(B_j) - conf(B_j)|."""
    full = bins.counts > 0
    gaps = np.abs(bins.correct[full] - bins.confidence[full]) / bins.counts[full]
    return float(gaps.max())


def equal_mass_bins(confidences: ConfidenceList, bins: int) -> ConfidenceBins:
    """The M equal-mass bins of adaece: the confidences sorted ascending, bin b holding sorted
    positions [floor(bN/M), floor((b+1)N/M)). Equal confidences are ordered wrong before right,
    so the bins depend only on the samples, not on their order in the file."""
    conf, correct = confidences.arrays()
    order = np.lexsort((correct, conf))
    edges = (np.arange(bins + 1) * conf.size) // bins
    index = np.repeat(np.arange(bins), np.diff(edges))
    sorted_conf, sorted_correct = conf[order], correct[order]
    return ConfidenceBins(
        counts=np.diff(edges).astype(np.int64),
        confidence=np.bincount(index, weights=sorted_conf, minlength=bins),
        correct=np.bincount(index[sorted_correct], minlength=bins).astype(np.int64),
    )


def classwise_error(classwise: ClasswiseBins, n: int) -> float:
    """(1/K) sum_k sum_j |labelled_kj - sum p_kj| / N: the ECE of every class's probability
    against the frequency of that class, averaged over the K classes."""
    k = classwise.counts.shape[0]
    return float(np.sum(np.abs(classwise.labelled - classwise.probability)) / (n * k))


def calibration_metrics(stats: CalibrationStats) -> dict[str, float]:
    """ece, mce, adaece, cw_ece, nll and brier at the temperature the stats were gathered at
    (N >= 1; all lower is better)."""
    n = stats.scores.n
    bins = stats.bins.counts.size
    return {
        "ece": expected_error(stats.bins, n),
        "mce": maximum_error(stats.bins),
        "adaece": expected_error(equal_mass_bins(stats.confidences, bins), n),
        "cw_ece": classwise_error(stats.classwise, n),
        "nll": stats.scores.nll / n,
        "brier": stats.scores.brier / n,
    }


def nll_derivatives(z: np.ndarray, labels: np.ndarray, beta: float) -> tuple[float, float, float]:
    """Sums over the block at inverse temperature beta = 1/T: the NLL, its first and its second
    derivative in beta. With s = z - max_k z and p = softmax(beta s): NLL_i = log sum_k
    exp(beta s_ik) - beta s_iy, d/dbeta = E_p[s] - s_iy, d2/dbeta2 = Var_p[s] >= 0 (the NLL is
    convex in beta)."""
    s = z - z.max(axis=1, keepdims=True)
    s_label = s[np.arange(z.shape[0]), labels]
    e = np.multiply(s, beta)
    np.exp(e, out=e)
    total = e.sum(axis=1)
    e *= s  # e s
    mean_s = e.sum(axis=1) / total
    e *= s  # e s^2
    mean_s2 = e.sum(axis=1) / total
    nll = float(np.sum(np.log(total)) - beta * np.sum(s_label))
    return nll, float(np.sum(mean_s - s_label)), float(np.sum(np.maximum(mean_s2 - mean_s**2, 0)))


Derivatives = Callable[[float], tuple[float, float, float]]


def fit_temperature(at: Derivatives) -> float:
    """argmin over T in [0.05, 20] of the mean NLL, to a relative tolerance of 1e-6 in T, from
    `at(beta)` -> (mean NLL, its derivative, its second derivative) at beta = 1/T.

    The NLL is convex in beta, so its derivative rises through at most one zero. From T = 1 the
    end of [1/20, 1/0.05] the NLL falls towards is evaluated: if the derivative has not changed
    sign there (the NLL still falls, or is flat to rounding: logits that classify every sample
    right by a wide margin), that end is the answer (and `on_bound` says so). Otherwise the
    zero is bracketed and found by Newton's method, safeguarded as in Numerical Recipes'
    `rtsafe`: a geometric bisection whenever Newton's step would leave the bracket or shrink it
    too slowly. One call of `at` is one pass over the logits: 2 at an end, about 6 to 9 inside.
    """
    lo, hi = 1.0 / T_BOUNDS[1], 1.0 / T_BOUNDS[0]
    beta = 1.0
    _, g, h = at(beta)
    if g == 0.0:
        return 1.0
    end = hi if g < 0 else lo
    _, g_end, h_end = at(end)
    if g_end * g >= 0.0:  # no sign change up to the end: the minimum is there
        return 1.0 / end
    a, b = (beta, end) if g < 0 else (end, beta)  # g(a) < 0 < g(b)
    if abs(g_end) < abs(g):  # start from the end nearer the zero
        beta, g, h = end, g_end, h_end
    width = b - a
    for _ in range(200):
        newton = beta - g / h if h > 0 else math.nan
        if not (a < newton < b) or abs(2.0 * g) > abs(width * h):
            step = math.sqrt(a * b)  # out of the bracket, or too slow: bisect (in log beta)
        else:
            step = newton
        width = abs(step - beta)
        if width <= 0.1 * T_RTOL * beta:
            return 1.0 / step
        beta = step
        _, g, h = at(beta)
        if g == 0.0:
            return 1.0 / beta
        if g < 0:
            a = beta
        else:
            b = beta
        if b - a <= 0.1 * T_RTOL * a:
            return 2.0 / (a + b)
    return 1.0 / beta  # pragma: no cover - the bracket halves at least every other step


def on_bound(temperature: float) -> bool:
    """Whether a fitted temperature lies at an end of [0.05, 20] (within a few tolerances)."""
    lo, hi = T_BOUNDS
    return temperature <= lo * (1 + 10 * T_RTOL) or temperature >= hi * (1 - 10 * T_RTOL)


def lowest_ece_temperature(
    temperatures: Sequence[float], bins: Sequence[ConfidenceBins], n: int
) -> tuple[float, float]:
    """(T, ece at T): the temperature whose histogram has the lowest ECE, the first on a tie
    (the authors' variant, over `GRID_TEMPERATURES`)."""
    errors = [expected_error(b, n) for b in bins]
    best = int(np.argmin(errors))
    return float(temperatures[best]), errors[best]
