"""Streaming regression statistics: update, merge, finalize; no I/O, no metrics.

Owns: `RegressionMoments` (pass 1: feature and target means and centred scatters, the RSS, and
optionally the uncentred unit rows' second moment), `RegressionCentred` (the centred unit rows'
D x D second moment, mu_G fixed) and `UnitProjections` (pass 2: the uncentred or centred unit
rows projected on a few fixed directions, which is all nrc1 / nrc2 need). Memory is
O(D^2 + T^2), independent of N; every merge is exact (Chan's pairwise update for the means and
centred scatters, plain sums for the rest) and accumulates in float64.
Never reads files and never computes a metric (`metrics.regression` does, from these).
Axes: N samples, B rows of a block, D feature dim, T regression targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ncinspect.stats.blocks import row_dots, sub_blocks, thin_matmul
from ncinspect.stats.parallel import scratch as thread_scratch


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


def _mean_and_scatter(
    x: np.ndarray, scratch: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, centred scatter sum_i (x_i - mean)(x_i - mean)^T) of the rows of `x`, in float64.

    scratch: optional float64 array of at least x's size that may be overwritten; it holds the
    centred rows instead of a new (B, D) temporary.
    """
    n, d = x.shape
    if n == 0:
        return np.zeros(d, dtype=np.float64), np.zeros((d, d), dtype=np.float64)
    if scratch is None:
        dev = thread_scratch("centred", (n, d))
    else:
        dev = scratch.reshape(-1)[: n * d].reshape(n, d)
    # the mean straight from the stored rows (summed in float64, as dev.mean would), then each
    # cache-sized piece converted and centred while it is in cache: one pass over dev, not three
    mean = np.sum(x, axis=0, dtype=np.float64) / n
    for sl in sub_blocks(n, d):
        piece = dev[sl]
        np.copyto(piece, x[sl])
        piece -= mean
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
    scatter = scatter_a + scatter_b
    scatter += np.multiply.outer(delta, delta * (na * nb / n))
    return mean, scatter


@dataclass
class RegressionMoments:
    """Pass-1 statistics of (features h, targets y, predictions yhat) for one regression source.

    n: rows seen. feature_mean (D,) = mu_G; feature_scatter (D, D) = sum_i (h_i - mu_G)(...)^T.
    unit_second (D, D) = sum over non-zero rows of hn_i hn_i^T with hn_i = h_i / ||h_i||
    (uncentred); n_zero_norm rows had ||h_i|| = 0 and are not in it. unit_second is None (and
    n_zero_norm 0) when built with unit_rows=False: the analysis then projects the unit rows in
    pass 2 (`UnitProjections`) instead of paying for this second D x D product.
    target_mean (T,) = ybar; target_scatter (T, T) = sum_i (y_i - ybar)(y_i - ybar)^T.
    rss = sum_i ||y_i - yhat_i||^2.
    """

    n: int
    feature_mean: np.ndarray
    feature_scatter: np.ndarray
    unit_second: np.ndarray | None
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
        cls,
        features: np.ndarray,
        targets: np.ndarray,
        predictions: np.ndarray,
        *,
        unit_rows: bool = True,
        scratch: np.ndarray | None = None,
    ) -> RegressionMoments:
        """Statistics of one block: features (B, D), targets (B, T), predictions (B, T).

        scratch: optional float64 buffer (at least B x D entries) the block may overwrite, so a
        caller streaming many blocks allocates the (B, D) centred copy once.
        """
        x = np.asarray(features)
        y = np.asarray(targets, dtype=np.float64)
        yhat = np.asarray(predictions, dtype=np.float64)
        feature_mean, feature_scatter = _mean_and_scatter(x, scratch)
        target_mean, target_scatter = _mean_and_scatter(y)
        unit_second, n_zero = None, 0
        if unit_rows:
            unit, n_zero = _unit_rows(np.asarray(x, dtype=np.float64))
            unit_second = unit.T @ unit
        resid = y - yhat
        return cls(
            n=int(x.shape[0]),
            feature_mean=feature_mean,
            feature_scatter=feature_scatter,
            unit_second=unit_second,
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

    def captured(self, basis: np.ndarray) -> float:
        """sum_i ||basis^T hn_i||^2 over the unit rows, for a (D, r) orthonormal basis."""
        if self.unit_second is None:
            raise ValueError("these moments were gathered without unit rows (unit_rows=False)")
        return _captured(self.unit_second, basis)

    def covers(self, basis: np.ndarray) -> bool:
        """Whether `captured` holds for this basis: always (the full D x D second moment)."""
        return True

    def merge(self, other: RegressionMoments) -> RegressionMoments:
        """Exact combination of two disjoint row sets (Chan's update; sums for the rest)."""
        a, b = self, other
        feature_mean, feature_scatter = _chan_merge(
            a.n, a.feature_mean, a.feature_scatter, b.n, b.feature_mean, b.feature_scatter
        )
        target_mean, target_scatter = _chan_merge(
            a.n, a.target_mean, a.target_scatter, b.n, b.target_mean, b.target_scatter
        )
        unit_second = None
        if self.unit_second is not None and other.unit_second is not None:
            unit_second = self.unit_second + other.unit_second
        return RegressionMoments(
            n=self.n + other.n,
            feature_mean=feature_mean,
            feature_scatter=feature_scatter,
            unit_second=unit_second,
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

    def target_second(self) -> np.ndarray:
        """The uncentred second moment (T, T) = (1/N) sum_i y_i y_i^T = Sigma + ybar ybar^T."""
        return self.target_cov() + np.outer(self.target_mean, self.target_mean)


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

    def captured(self, basis: np.ndarray) -> float:
        """sum_i ||basis^T hc_i||^2 over the unit rows, for a (D, r) orthonormal basis."""
        return _captured(self.unit_second, basis)

    def covers(self, basis: np.ndarray) -> bool:
        """Whether `captured` holds for this basis: always (the full D x D second moment)."""
        return True

    def merge(self, other: RegressionCentred) -> RegressionCentred:
        return RegressionCentred(
            n=self.n + other.n,
            unit_second=self.unit_second + other.unit_second,
            n_zero_norm=self.n_zero_norm + other.n_zero_norm,
        )

    def update(self, features: np.ndarray, mu_g: np.ndarray) -> RegressionCentred:
        return self.merge(RegressionCentred.from_batch(features, mu_g))


def _captured(unit_second: np.ndarray, basis: np.ndarray) -> float:
    """tr(B^T M B) = sum_i ||B^T u_i||^2 for M = sum_i u_i u_i^T."""
    return float(np.einsum("dr,de,er->", basis, unit_second, basis))


# `UnitProjections.covers`: the share of a basis allowed outside span(Q) (rounding only).
_COVER_TOLERANCE = 1e-9
# Centred unit rows from the uncentred product when (||x|| + ||c||)^2 <= this x ||x - c||^2 for
# every row of a sub-block.
_SHORTCUT_RATIO = 64.0
# Squared row norms in this range are taken directly: no overflow, no loss to underflow.
_SAFE_SQ_NORM = (2.0**-960, 2.0**960)


@dataclass
class UnitProjections:
    """Unit feature rows projected on a fixed orthonormal basis Q (D, m), m <= max(T, 10) + T.

    u_i = (h_i - c) / ||h_i - c|| for a fixed centre c (none: the paper's uncentred rows; mu_G:
    the centred ones). n rows seen, n_zero_norm of them with h_i = c and left out, and
    gram (m, m) = sum_i (Q^T u_i)(Q^T u_i)^T. For any orthonormal B (D, r) inside span(Q),
    sum_i ||B^T u_i||^2 = tr(C^T gram C) with C = Q^T B, so nrc1, nrc1_at_k and nrc2 (B = top
    principal directions or the row space of W, fixed after pass 1) need this m x m matrix, not
    the D x D second moment: pass 2 is O(N D m), not O(N D^2). Plain sums; merging is exact.
    """

    basis: np.ndarray
    n: int
    n_zero_norm: int
    gram: np.ndarray

    @classmethod
    def empty(cls, basis: np.ndarray) -> UnitProjections:
        m = basis.shape[1]
        return cls(basis=basis, n=0, n_zero_norm=0, gram=np.zeros((m, m), dtype=np.float64))

    @classmethod
    def from_batch(
        cls, features: np.ndarray, basis: np.ndarray, centre: np.ndarray | None = None
    ) -> UnitProjections:
        """Projections of one block's unit rows, features (B, D), centred on `centre` if given."""
        if centre is None:
            return cls.pair_from_batch(features, basis, None)[0]
        return cls.pair_from_batch(features, basis, centre)[1]

    @classmethod
    def pair_from_batch(
        cls, features: np.ndarray, basis: np.ndarray, centre: np.ndarray | None
    ) -> tuple[UnitProjections, UnitProjections]:
        """(uncentred, centred on `centre`) projections of one block's unit rows.

        Each cache-sized sub-block is converted to float64 once, measured and projected on
        [Q | c] in one product; the (B, m) projections are then divided by the row norms (no
        (B, D) unit-row copy). centre None: the second result equals the first.

        The centred values come from the same product, x Q - c Q and ||x||^2 - 2 x . c + ||c||^2,
        when that is as accurate as centring first for every row of the sub-block: their errors
        are at most g (||x|| + ||c||)^2 and g (||x|| + ||c||) (g: a float64 dot-product bound),
        against g ||x - c||^2 and g ||x - c|| with x - c formed first, so the shortcut is taken
        when (||x|| + ||c||)^2 <= 64 ||x - c||^2 (at most 64 times the centred-first bound, 4e-12
        relative at D = 512). Otherwise (rows near the centre, e.g. features with a large common
        offset) the sub-block, still in cache, is centred, measured and projected again.
        """
        x = np.asarray(features)
        n, d = x.shape
        m = basis.shape[1]
        proj = np.empty((2, n, m))
        sq = np.empty((2, n))
        qc = basis if centre is None else np.concatenate([basis, centre[:, None]], axis=1)
        both = np.empty((n, qc.shape[1]))
        if centre is not None:
            cq = centre @ basis
            cc = float(centre @ centre)
            cnorm = math.sqrt(cc)
        # extreme rows may overflow here; `_normalized` redoes them by the scaled route
        with np.errstate(over="ignore", invalid="ignore"):
            for sl in sub_blocks(n, d, nbytes=1 << 20):
                rows = thread_scratch("unit_rows", (sl.stop - sl.start, d))
                np.copyto(rows, x[sl])
                sq[0, sl] = row_dots(rows, rows)
                thin_matmul(rows, qc, out=both[sl])
                if centre is None:
                    continue
                np.subtract(both[sl, :m], cq, out=proj[1, sl])
                np.multiply(both[sl, m], -2.0, out=sq[1, sl])
                sq[1, sl] += sq[0, sl]
                sq[1, sl] += cc
                spread = np.sqrt(sq[0, sl]) + cnorm
                if not np.all(spread * spread <= _SHORTCUT_RATIO * sq[1, sl]):
                    rows -= centre  # centre first
                    sq[1, sl] = row_dots(rows, rows)
                    thin_matmul(rows, basis, out=proj[1, sl])
        proj[0] = both[:, :m]
        uncentred = cls._normalized(x, basis, proj[0], sq[0], None)
        if centre is None:
            return uncentred, uncentred
        return uncentred, cls._normalized(x, basis, proj[1], sq[1], centre)

    @classmethod
    def _normalized(
        cls,
        x: np.ndarray,
        basis: np.ndarray,
        proj: np.ndarray,
        sq: np.ndarray,
        centre: np.ndarray | None,
    ) -> UnitProjections:
        """Divide the projections (B, m) of x - centre by the row norms (sq: squared norms).

        Rows whose squared norm is extreme (zero, tiny, huge or not finite) are redone by
        `_unit_rows`' scaled route, which also leaves out the zero rows.
        """
        lo, hi = _SAFE_SQ_NORM
        safe = (sq >= lo) & (sq <= hi)
        n_zero = 0
        if safe.all():
            proj /= np.sqrt(sq)[:, None]
        else:
            rows = np.asarray(x[~safe], dtype=np.float64)
            unit, n_zero = _unit_rows(rows if centre is None else rows - centre)
            direct = proj[safe] / np.sqrt(sq[safe])[:, None]
            proj = np.concatenate([direct, unit @ basis])
        return cls(basis=basis, n=int(sq.shape[0]), n_zero_norm=n_zero, gram=proj.T @ proj)

    @property
    def n_unit(self) -> int:
        return self.n - self.n_zero_norm

    def captured(self, basis: np.ndarray) -> float:
        """sum_i ||basis^T u_i||^2 for an orthonormal (D, r) basis inside span(Q)."""
        c = self.basis.T @ basis
        return float(np.einsum("ar,ab,br->", c, self.gram, c))

    def covers(self, basis: np.ndarray) -> bool:
        """Whether the orthonormal (D, r) `basis` lies inside span(Q), so that `captured` holds:
        ||Q^T B||_F^2 = r to rounding (statistics saved with a smaller Q do not cover it)."""
        c = self.basis.T @ basis
        r = basis.shape[1]
        return bool(float(np.einsum("ar,ar->", c, c)) >= r * (1.0 - _COVER_TOLERANCE))

    def merge(self, other: UnitProjections) -> UnitProjections:
        return UnitProjections(
            basis=self.basis,
            n=self.n + other.n,
            n_zero_norm=self.n_zero_norm + other.n_zero_norm,
            gram=self.gram + other.gram,
        )
