"""Naive regression-collapse oracle: every key of the regression table computed the slow, obvious
way, straight from docs/metrics.md and independently of ncinspect (which it never imports).

Full N x D matrices, PCA by an SVD of the centred data, projectors built as pinv(W) W and V V^T,
a per-sample loop over unit vectors, and nrc3 by brute force on a dense gamma grid with full
T x T matrices. Slow on purpose; only for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ORACLE_GRID = 200_001


def naive_sqrt(sigma: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(sigma)
    return vecs @ np.diag(np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def naive_nrc3_curve(w: np.ndarray, sigma: np.ndarray, gammas: np.ndarray) -> np.ndarray:
    """||W W^T/||W W^T||_F - A_g/||A_g||_F||_F^2 with explicit T x T matrices, per gamma."""
    t = w.shape[0]
    ww = w @ w.T
    g = ww / np.linalg.norm(ww)
    a = naive_sqrt(sigma)[None] - np.sqrt(gammas)[:, None, None] * np.eye(t)[None]
    a = a / np.linalg.norm(a, axis=(1, 2))[:, None, None]
    return ((g[None] - a) ** 2).sum(axis=(1, 2))


def naive_unit_distance(h: np.ndarray, p: np.ndarray) -> float:
    """(1/n) sum over non-zero rows of ||hn - P hn||^2, one sample at a time."""
    total, count = 0.0, 0
    for row in h:
        norm = np.linalg.norm(row)
        if norm == 0:
            continue
        u = row / norm
        total += float(np.sum((u - p @ u) ** 2))
        count += 1
    return total / count


@dataclass
class Oracle:
    metrics: dict[str, float]
    lambda_min: float
    sigma: np.ndarray
    grid: np.ndarray
    curve: np.ndarray


def naive_regression(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    outputs: np.ndarray | None = None,
) -> Oracle:
    """Every key of the spec's regression table, computed the slow, obvious way."""
    n, t = y.shape
    x = x.astype(np.float64)
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    p_pca = vt[:t].T @ vt[:t]
    p_w = np.linalg.pinv(w) @ w
    yhat = outputs if outputs is not None else x @ w.T + (0.0 if b is None else b)
    resid = y - yhat
    sigma = (y - y.mean(axis=0)).T @ (y - y.mean(axis=0)) / n
    lam_min = float(np.linalg.eigvalsh(sigma).min())
    grid = np.linspace(0.0, lam_min, ORACLE_GRID)
    if t > 1:
        curve = naive_nrc3_curve(w, sigma, grid)
    else:  # A_g is 1 x 1 and vanishes at gamma = lambda_min; nrc3 is not defined for T = 1
        curve = np.full(grid.shape, np.nan)
    i = int(np.argmin(curve))
    metrics = {
        "nrc1": naive_unit_distance(x, p_pca),
        "nrc2": naive_unit_distance(x, p_w),
        "nrc1_centered": naive_unit_distance(xc, p_pca),
        "nrc2_centered": naive_unit_distance(xc, p_w),
        "nrc3": float(curve[i]),
        "nrc3_gamma": float(grid[i]),
        "nrc3_gamma_ratio": float(grid[i] / lam_min),
        "evr": float(np.sum(s[:t] ** 2) / np.sum(s**2)),
        "mse": float(np.mean(resid**2)),
        "r2": float(1 - np.sum(resid**2) / np.sum((y - y.mean(axis=0)) ** 2)),
    }
    return Oracle(metrics, lam_min, sigma, grid, curve)
