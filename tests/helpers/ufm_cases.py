"""The UFM cases the theory tests share: the check values of both closed forms (docs/metrics.md),
the solver's accuracy, and seeded random parameters inside the collapse regime."""

from __future__ import annotations

import math

import numpy as np

# docs/metrics.md, "The unconstrained feature model (UFM)": K = 4, n = 5, lambda_W = lambda_H = 0.01
# (alpha, q*, margin, ||w||^2, ||h||^2)
CLASSIFY_TABLE = [
    (0.0, 0.022361, 3.7310, 6.2571, 1.2514),
    (0.1, 0.047361, 2.8967, 4.8579, 0.9716),
    (0.3, 0.097361, 1.9839, 3.3271, 0.6654),
]
# (Sigma, lambda_H, lambda_W, W W^T, tolerance: the third value is printed to 3 decimals)
REGRESS_TABLE = [
    (np.diag([4.0, 1.0]), 0.1, 0.1, np.diag([1.9, 0.9]), 1e-12),
    (np.diag([4.0, 1.0]), 0.2, 0.05, np.diag([3.8, 1.8]), 1e-12),
    (
        np.array([[2.0, 1.0], [1.0, 2.0]]),
        0.2,
        0.2,
        np.array([[1.166, 0.366], [0.366, 1.166]]),
        1e-3,
    ),
]
SOLVER_ACCURACY = 1e-4


def random_classify_cases() -> list[tuple[int, int, int, float, float, float]]:
    """(K, D, n, lambda_W, lambda_H, alpha) with a non-zero minimizer, one per alpha."""
    rng = np.random.default_rng(20240611)
    cases = []
    for alpha in (0.0, 0.1, 0.3):
        k = int(rng.integers(3, 7))
        d = int(rng.integers(k, 17))
        n = int(rng.integers(3, 7))
        lw, lh = np.exp(rng.uniform(math.log(1e-3), math.log(5e-2), size=2))
        cases.append((k, d, n, float(lw), float(lh), alpha))
    return cases


def random_regress_cases() -> list[tuple[np.ndarray, int, float, float]]:
    """(Sigma, D, lambda_H, lambda_W) with lambda_H lambda_W below lambda_min(Sigma): collapse."""
    rng = np.random.default_rng(7)
    cases = []
    for _ in range(3):
        t = int(rng.integers(2, 4))
        a = rng.normal(size=(t, t))
        sigma = a @ a.T + 0.3 * np.eye(t)
        lam_min = float(np.linalg.eigvalsh(sigma)[0])
        c = float(rng.uniform(0.05, 0.9)) * lam_min
        ratio = float(np.exp(rng.uniform(-1.0, 1.0)))  # lambda_H / lambda_W
        d = int(rng.integers(4, 9))
        cases.append((sigma, d, math.sqrt(c * ratio), math.sqrt(c / ratio)))
    return cases
