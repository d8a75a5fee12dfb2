"""Streaming sufficient statistics for classification: update, merge, finalize; no I/O.

Owns: `ClassMoments` (pass 1: per-class counts, means and squared deviations, merged with Chan's
pairwise update in float64) and `ClassScatter` (pass 2, with the means fixed: the within-class
scatter in the cheaper exact basis, and the counts behind accuracy and NC4). Both merge exactly, so
batch size and shard order cannot change a result beyond float64 rounding.

Never reads files and never computes a metric: `collapse` turns finalized statistics into metrics.
Axes: N samples, D feature dim, K classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _per_class_sums(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(K, D) float64 sums of the rows of each class, without a K x N one-hot matrix."""
    d = features.shape[1]
    sums = np.zeros((k, d), dtype=np.float64)
    if labels.size == 0:
        return sums
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    block = np.add.reduceat(features[order].astype(np.float64, copy=False), starts, axis=0)
    sums[sorted_labels[starts]] = block
    return sums


@dataclass
class ClassMoments:
    """Pass-1 statistics: counts (K,), means (K, D), m2 (K,) = sum_i in k ||h_i - mu_k||^2."""

    counts: np.ndarray
    means: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, k: int, d: int) -> ClassMoments:
        return cls(
            counts=np.zeros(k, dtype=np.int64),
            means=np.zeros((k, d), dtype=np.float64),
            m2=np.zeros(k, dtype=np.float64),
        )

    @classmethod
    def from_batch(cls, features: np.ndarray, labels: np.ndarray, k: int) -> ClassMoments:
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(y, minlength=k).astype(np.int64)
        sums = _per_class_sums(x, y, k)
        means = np.divide(sums, np.maximum(counts, 1)[:, None])
        dev = x - means[y]
        m2 = np.bincount(y, weights=np.einsum("ij,ij->i", dev, dev), minlength=k)
        return cls(counts=counts, means=means, m2=m2.astype(np.float64))

    @property
    def k(self) -> int:
        return int(self.counts.shape[0])

    @property
    def d(self) -> int:
        return int(self.means.shape[1])

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def merge(self, other: ClassMoments) -> ClassMoments:
        """Chan et al.'s pairwise update, class by class; exact in exact arithmetic."""
        na = self.counts.astype(np.float64)
        nb = other.counts.astype(np.float64)
        n = na + nb
        safe = np.where(n > 0, n, 1.0)
        delta = other.means - self.means
        means = self.means + delta * (nb / safe)[:, None]
        m2 = self.m2 + other.m2 + np.einsum("kd,kd->k", delta, delta) * na * nb / safe
        return ClassMoments(counts=self.counts + other.counts, means=means, m2=m2)

    def update(self, features: np.ndarray, labels: np.ndarray) -> ClassMoments:
        return self.merge(ClassMoments.from_batch(features, labels, self.k))

    def global_mean(self) -> np.ndarray:
        """mu_G = (1/N) sum_i h_i, the sample-weighted mean of the class means."""
        return (self.counts.astype(np.float64) @ self.means) / max(self.n, 1)


@dataclass
class ScatterPlan:
    """What pass 2 needs, fixed after pass 1.

    `basis` is None for the D x D route (scatter of the raw deviations) or the (r, D) matrix Mc of
    centred present-class means for the class-span route (scatter of Mc (h_i - mu_{y_i})).
    """

    means: np.ndarray  # (K, D) class means
    present: np.ndarray  # (K,) bool, classes with at least one sample
    basis: np.ndarray | None
    weight: np.ndarray  # (K, D)
    bias: np.ndarray  # (K,)

    @property
    def route(self) -> str:
        return "dxd" if self.basis is None else "class_span"


def plan_scatter(
    moments: ClassMoments, weight: np.ndarray, bias: np.ndarray, route: str = "auto"
) -> ScatterPlan:
    """Choose the cheaper exact NC1 route: the class span when K_eff < D, else D x D."""
    present = moments.counts > 0
    k_eff = int(present.sum())
    if route == "auto":
        route = "class_span" if k_eff < moments.d else "dxd"
    basis = None
    if route == "class_span":
        basis = moments.means[present] - moments.global_mean()
    return ScatterPlan(
        means=moments.means,
        present=present,
        basis=basis,
        weight=np.asarray(weight, dtype=np.float64),
        bias=np.asarray(bias, dtype=np.float64),
    )


@dataclass
class ClassScatter:
    """Pass-2 statistics, plain sums: scatter (r, r), n, correct (accuracy), ncc_mismatch (NC4)."""

    scatter: np.ndarray
    n: int = 0
    correct: int = 0
    ncc_mismatch: int = 0
    route: str = field(default="dxd")

    @classmethod
    def empty(cls, plan: ScatterPlan) -> ClassScatter:
        r = plan.means.shape[1] if plan.basis is None else plan.basis.shape[0]
        return cls(scatter=np.zeros((r, r), dtype=np.float64), route=plan.route)

    @classmethod
    def from_batch(
        cls, plan: ScatterPlan, features: np.ndarray, labels: np.ndarray
    ) -> ClassScatter:
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels, dtype=np.int64)
        dev = x - plan.means[y]
        z = dev if plan.basis is None else dev @ plan.basis.T
        scatter = z.T @ z
        pred = np.argmax(x @ plan.weight.T + plan.bias, axis=1)
        idx = np.flatnonzero(plan.present)
        mu = plan.means[idx]
        # argmin_k ||h - mu_k||^2 = argmin_k (||mu_k||^2 - 2 h.mu_k); ties go to the lowest index.
        dist = np.einsum("kd,kd->k", mu, mu)[None, :] - 2.0 * (x @ mu.T)
        ncc = idx[np.argmin(dist, axis=1)]
        return cls(
            scatter=scatter,
            n=int(x.shape[0]),
            correct=int(np.count_nonzero(pred == y)),
            ncc_mismatch=int(np.count_nonzero(pred != ncc)),
            route=plan.route,
        )

    def merge(self, other: ClassScatter) -> ClassScatter:
        return ClassScatter(
            scatter=self.scatter + other.scatter,
            n=self.n + other.n,
            correct=self.correct + other.correct,
            ncc_mismatch=self.ncc_mismatch + other.ncc_mismatch,
            route=self.route,
        )


# --- regression ---
# Streaming statistics for the regression-collapse metrics (axes N, D, T). Memory is
# O(D^2 + T^2), independent of N; every merge is exact (Chan's pairwise update for the means and
# centred scatters, plain sums for the rest) and accumulates in float64.


def _unit_rows(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows of `x` scaled to unit Euclidean norm, and the number of zero rows left out.

    Each row is divided by its largest absolute entry before the norm is taken, so rows with tiny
    or huge entries neither underflow to a false zero norm nor overflow.
    """
    if x.shape[0] == 0:
        return x, 0
    scale = np.max(np.abs(x), axis=1)
    nonzero = scale > 0
    y = x[nonzero] / scale[nonzero, None]
    y /= np.linalg.norm(y, axis=1)[:, None]
    return y, int(x.shape[0] - y.shape[0])


def _mean_and_scatter(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, centred scatter sum_i (x_i - mean)(x_i - mean)^T) of the rows of `x`, in float64."""
    if x.shape[0] == 0:
        d = x.shape[1]
        return np.zeros(d, dtype=np.float64), np.zeros((d, d), dtype=np.float64)
    mean = x.mean(axis=0)
    dev = x - mean
    return mean, dev.T @ dev


def _chan_merge(
    na: int,
    mean_a: np.ndarray,
    scatter_a: np.ndarray,
    nb: int,
    mean_b: np.ndarray,
    scatter_b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Chan et al.'s pairwise update of (mean, centred scatter) for two disjoint row sets."""
    n = na + nb
    if n == 0:
        return mean_a.copy(), scatter_a.copy()
    delta = mean_b - mean_a
    mean = mean_a + delta * (nb / n)
    scatter = scatter_a + scatter_b + np.outer(delta, delta) * (na * nb / n)
    return mean, scatter


@dataclass
class RegressionMoments:
    """Pass-1 statistics of (features h, targets y, predictions yhat) for one regression source.

    n: rows seen. feature_mean (D,) = mu_G; feature_scatter (D, D) = sum_i (h_i - mu_G)(...)^T.
    unit_second (D, D) = sum over non-zero rows of hn_i hn_i^T with hn_i = h_i / ||h_i||
    (uncentred); n_zero_norm rows had ||h_i|| = 0 and are not in it.
    target_mean (T,) = ybar; target_scatter (T, T) = sum_i (y_i - ybar)(y_i - ybar)^T.
    rss = sum_i ||y_i - yhat_i||^2.
    """

    n: int
    feature_mean: np.ndarray
    feature_scatter: np.ndarray
    unit_second: np.ndarray
    n_zero_norm: int
    target_mean: np.ndarray
    target_scatter: np.ndarray
    rss: float

    @classmethod
    def empty(cls, d: int, t: int) -> RegressionMoments:
        return cls(
            n=0,
            feature_mean=np.zeros(d, dtype=np.float64),
            feature_scatter=np.zeros((d, d), dtype=np.float64),
            unit_second=np.zeros((d, d), dtype=np.float64),
            n_zero_norm=0,
            target_mean=np.zeros(t, dtype=np.float64),
            target_scatter=np.zeros((t, t), dtype=np.float64),
            rss=0.0,
        )

    @classmethod
    def from_batch(
        cls, features: np.ndarray, targets: np.ndarray, predictions: np.ndarray
    ) -> RegressionMoments:
        """Statistics of one block: features (B, D), targets (B, T), predictions (B, T)."""
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(targets, dtype=np.float64)
        yhat = np.asarray(predictions, dtype=np.float64)
        feature_mean, feature_scatter = _mean_and_scatter(x)
        target_mean, target_scatter = _mean_and_scatter(y)
        unit, n_zero = _unit_rows(x)
        resid = y - yhat
        return cls(
            n=int(x.shape[0]),
            feature_mean=feature_mean,
            feature_scatter=feature_scatter,
            unit_second=unit.T @ unit,
            n_zero_norm=n_zero,
            target_mean=target_mean,
            target_scatter=target_scatter,
            rss=float(np.einsum("ij,ij->", resid, resid)),
        )

    @property
    def d(self) -> int:
        return int(self.feature_mean.shape[0])

    @property
    def t(self) -> int:
        return int(self.target_mean.shape[0])

    @property
    def n_unit(self) -> int:
        """Rows with a non-zero feature vector (those behind `unit_second`)."""
        return self.n - self.n_zero_norm

    def merge(self, other: RegressionMoments) -> RegressionMoments:
        """Exact combination of two disjoint row sets (Chan's update; sums for the rest)."""
        a, b = self, other
        feature_mean, feature_scatter = _chan_merge(
            a.n, a.feature_mean, a.feature_scatter, b.n, b.feature_mean, b.feature_scatter
        )
        target_mean, target_scatter = _chan_merge(
            a.n, a.target_mean, a.target_scatter, b.n, b.target_mean, b.target_scatter
        )
        return RegressionMoments(
            n=self.n + other.n,
            feature_mean=feature_mean,
            feature_scatter=feature_scatter,
            unit_second=self.unit_second + other.unit_second,
            n_zero_norm=self.n_zero_norm + other.n_zero_norm,
            target_mean=target_mean,
            target_scatter=target_scatter,
            rss=self.rss + other.rss,
        )

    def update(
        self, features: np.ndarray, targets: np.ndarray, predictions: np.ndarray
    ) -> RegressionMoments:
        return self.merge(RegressionMoments.from_batch(features, targets, predictions))

    def feature_cov(self) -> np.ndarray:
        """Centred feature covariance (D, D), divisor N, symmetrized."""
        cov = self.feature_scatter / max(self.n, 1)
        return (cov + cov.T) / 2

    def target_cov(self) -> np.ndarray:
        """Sigma (T, T) = (1/N) sum_i (y_i - ybar)(y_i - ybar)^T, symmetrized."""
        cov = self.target_scatter / max(self.n, 1)
        return (cov + cov.T) / 2


@dataclass
class RegressionCentred:
    """Pass-2 statistics with the global feature mean mu_G fixed.

    unit_second (D, D) = sum of hc_i hc_i^T with hc_i = (h_i - mu_G) / ||h_i - mu_G||, over the rows
    where that norm is non-zero; n rows seen, n_zero_norm of them equal to mu_G and left out.
    """

    n: int
    unit_second: np.ndarray
    n_zero_norm: int

    @classmethod
    def empty(cls, d: int) -> RegressionCentred:
        return cls(n=0, unit_second=np.zeros((d, d), dtype=np.float64), n_zero_norm=0)

    @classmethod
    def from_batch(cls, features: np.ndarray, mu_g: np.ndarray) -> RegressionCentred:
        x = np.asarray(features, dtype=np.float64) - np.asarray(mu_g, dtype=np.float64)
        unit, n_zero = _unit_rows(x)
        return cls(n=int(x.shape[0]), unit_second=unit.T @ unit, n_zero_norm=n_zero)

    @property
    def n_unit(self) -> int:
        return self.n - self.n_zero_norm

    def merge(self, other: RegressionCentred) -> RegressionCentred:
        return RegressionCentred(
            n=self.n + other.n,
            unit_second=self.unit_second + other.unit_second,
            n_zero_norm=self.n_zero_norm + other.n_zero_norm,
        )

    def update(self, features: np.ndarray, mu_g: np.ndarray) -> RegressionCentred:
        return self.merge(RegressionCentred.from_batch(features, mu_g))
