"""Seeded synthetic data: orthonormal frames, exact simplex ETFs, noisy classification sets,
targets with an exact covariance, and regression sources."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from ncinspect.io.sources import ArraySource
from ncinspect.metrics.head import Head


def random_orthonormal(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    """(d, k) matrix with orthonormal columns."""
    q, _ = np.linalg.qr(rng.normal(size=(d, k)))
    return q[:, :k]


def random_frame(rng: np.random.Generator, d: int, t: int) -> np.ndarray:
    """(D, T) matrix with orthonormal columns, signs fixed so the QR factor R has a positive
    diagonal (the same draws as `random_orthonormal`, column signs possibly flipped)."""
    q, r = np.linalg.qr(rng.normal(size=(d, t)))
    return q * np.sign(np.diag(r))


def random_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    """(D, D) orthogonal matrix (`random_frame` with T = D)."""
    return random_frame(rng, d, d)


def simplex_etf_means(rng: np.random.Generator, k: int, d: int, scale: float = 3.0) -> np.ndarray:
    """(K, D) class means forming a simplex ETF centred at a random offset (needs D >= K - 1)."""
    frame = random_orthonormal(rng, d, k)
    centred = (np.eye(k) - 1.0 / k) @ frame.T * scale
    return centred + rng.normal(size=d)


def classification_set(
    rng: np.random.Generator, k: int, d: int, n: int, noise: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features (N, D), labels (N,) covering every class, weight (K, D), bias (K,)."""
    means = rng.normal(size=(k, d)) * 2.0
    labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    features = means[labels] + noise * rng.normal(size=(n, d))
    weight = means + 0.5 * rng.normal(size=(k, d))
    bias = rng.normal(size=k)
    return features, labels.astype(np.int64), weight, bias


def targets_with_covariance(
    rng: np.random.Generator, n: int, sigma: np.ndarray, mean: np.ndarray
) -> np.ndarray:
    """(N, T) targets whose sample covariance (divisor N) is exactly `sigma` (whiten, recolour)."""
    t = sigma.shape[0]
    z = rng.normal(size=(n, t))
    z -= z.mean(axis=0)
    chol = np.linalg.cholesky(z.T @ z / n)
    white = np.linalg.solve(chol, z.T).T  # sample covariance I
    return white @ np.real(scipy.linalg.sqrtm(sigma)) + mean


def regression_source(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    outputs: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
) -> ArraySource:
    """An in-memory regression source: features (N, D), targets (N, T), the head (W, b)."""
    return ArraySource(
        path="<test>",
        task="regression",
        n=x.shape[0],
        d=x.shape[1],
        head=Head(np.asarray(w, dtype=np.float64), b),
        has_outputs=outputs is not None,
        meta=meta or {},
        features=x,
        targets=y,
        outputs=outputs,
    )
