"""Seeded synthetic data for tests: exact simplex ETFs and noisy classification sets."""

from __future__ import annotations

import numpy as np


def random_orthonormal(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    """(d, k) matrix with orthonormal columns."""
    q, _ = np.linalg.qr(rng.normal(size=(d, k)))
    return q[:, :k]


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
