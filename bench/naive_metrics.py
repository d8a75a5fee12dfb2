"""Naive in-memory implementations of `report`'s metrics: the baseline the benchmarks beat.

Written the way such code is usually written: load every feature into memory as float64, loop
over classes for the per-class D x D covariances, invert Sigma_B with a dense `np.linalg.pinv`,
loop in Python over class pairs for the CDNV, take NC4's distances from
`scipy.spatial.distance.cdist`, build D x D projectors for the regression metrics, and take the
PCA from an SVD of the centred N x D matrix. Same definitions as docs/metrics.md, for the
cases the benchmarks generate (every class present, Sigma_B of rank min(K - 1, D), no ties), so
`tests/test_bench_smoke.py` can check it against `ncinspect.api.analyze` (like with like).

Axes: N samples, D feature dim, K classes, T regression targets.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
from scipy.spatial.distance import cdist

PINV_RCOND = 1e-10  # the spec's eigenvalue cutoff, relative to the largest
NRC3_GRID = 200_001  # gammas on [0, lambda_min] for the brute-force nrc3 search


def load_store(path: str | Path) -> dict[str, np.ndarray]:
    """Every dataset of a store, in memory: features as float64, the rest as stored."""
    with h5py.File(path, "r") as f:
        out = {"features": np.asarray(f["features"][()], dtype=np.float64)}
        for name in ("labels", "targets", "outputs", "head/weight", "head/bias"):
            if name in f:
                out[name.split("/")[-1]] = np.asarray(f[name][()])
    out["weight"] = out["weight"].astype(np.float64)
    if "bias" in out:
        out["bias"] = out["bias"].astype(np.float64)
    return out


def _etf_error(gram: np.ndarray) -> float:
    k = gram.shape[0]
    target = (np.eye(k) - np.ones((k, k)) / k) / math.sqrt(k - 1)
    return float(np.linalg.norm(gram / np.linalg.norm(gram) - target))


def _angle_stats(vectors: np.ndarray) -> tuple[float, float]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos = (unit @ unit.T)[np.triu_indices(vectors.shape[0], 1)]
    k = vectors.shape[0]
    return float(np.std(cos, ddof=1)), float(np.mean(np.abs(cos + 1.0 / (k - 1))))


def _equinorm(vectors: np.ndarray) -> float:
    norms = np.linalg.norm(vectors, axis=1)
    return float(np.std(norms, ddof=1) / np.mean(norms))


def classification(path: str | Path) -> dict[str, float]:
    """Every classification key of the spec, the naive way (all K classes must be present)."""
    data = load_store(path)
    h, y, w = data["features"], data["labels"], data["weight"]
    k = w.shape[0]
    b = data.get("bias", np.zeros(k))
    n, d = h.shape

    means = np.zeros((k, d))
    sigma_w = np.zeros((d, d))
    variances = np.zeros(k)
    for c in range(k):  # one D x D covariance per class
        rows = h[y == c]
        means[c] = rows.mean(axis=0)
        dev = rows - means[c]
        sigma_w += dev.T @ dev
        variances[c] = np.sum(dev**2) / rows.shape[0]
    sigma_w /= n
    mu_g = h.mean(axis=0)
    mc = means - mu_g
    sigma_b = mc.T @ mc / k
    out: dict[str, float] = {}
    out["nc1"] = float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=PINV_RCOND))) / k

    terms = []
    for i in range(k):  # every class pair, in Python
        for j in range(i + 1, k):
            dist2 = float(np.sum((means[i] - means[j]) ** 2))
            terms.append((variances[i] + variances[j]) / (2.0 * dist2))
    out["nc1_cdnv"] = float(np.mean(terms))

    out["nc2_equinorm_means"] = _equinorm(mc)
    out["nc2_equinorm_weights"] = _equinorm(w)
    out["nc2_equiangle_means"], out["nc2_maxangle_means"] = _angle_stats(mc)
    out["nc2_equiangle_weights"], out["nc2_maxangle_weights"] = _angle_stats(w)
    out["nc2_etf_means"] = _etf_error(mc @ mc.T)
    out["nc2_etf_weights"] = _etf_error(w @ w.T)
    out["nc3"] = float(np.sum((w / np.linalg.norm(w) - mc / np.linalg.norm(mc)) ** 2))
    out["nc3_etf"] = _etf_error(w @ mc.T)

    pred = np.argmax(h @ w.T + b, axis=1)
    dist = cdist(h, means, "sqeuclidean")  # (N, K) distances to the class means
    out["nc4"] = float(np.mean(pred != np.argmin(dist, axis=1)))
    out["accuracy"] = float(np.mean(pred == y))
    out["bias_gap"] = float(np.linalg.norm(w @ mu_g + b))
    return out


def _unit_distance(rows: np.ndarray, projector: np.ndarray) -> float:
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return float(np.mean(np.sum((unit - unit @ projector) ** 2, axis=1)))


def _sqrtm_psd(sigma: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(sigma)
    return vecs @ np.diag(np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def nrc3_curve(w: np.ndarray, sigma: np.ndarray, gammas: np.ndarray) -> np.ndarray:
    """||W W^T/||W W^T||_F - A_g/||A_g||_F||_F^2 per gamma, with explicit T x T matrices."""
    t = w.shape[0]
    ww = w @ w.T
    a = _sqrtm_psd(sigma)[None] - np.sqrt(gammas)[:, None, None] * np.eye(t)[None]
    a = a / np.linalg.norm(a, axis=(1, 2))[:, None, None]
    return np.sum((ww / np.linalg.norm(ww) - a) ** 2, axis=(1, 2))


def regression(path: str | Path) -> dict[str, float]:
    """Every regression key of the spec, the naive way (T >= 2, Sigma non-singular)."""
    data = load_store(path)
    h, targets, w = data["features"], data["targets"].astype(np.float64), data["weight"]
    t = w.shape[0]
    b = data.get("bias", np.zeros(t))
    n = h.shape[0]
    centred = h - h.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)  # PCA of the N x D matrix
    p_pca = vt[:t].T @ vt[:t]
    p_w = np.linalg.pinv(w) @ w
    pred = data["outputs"].astype(np.float64) if "outputs" in data else h @ w.T + b
    resid = targets - pred
    yc = targets - targets.mean(axis=0)
    sigma = yc.T @ yc / n
    lam_min = float(np.linalg.eigvalsh(sigma)[0])
    gammas = np.linspace(0.0, lam_min, NRC3_GRID)
    curve = nrc3_curve(w, sigma, gammas)
    best = int(np.argmin(curve))
    return {
        "nrc1": _unit_distance(h, p_pca),
        "nrc2": _unit_distance(h, p_w),
        "nrc1_centered": _unit_distance(centred, p_pca),
        "nrc2_centered": _unit_distance(centred, p_w),
        "nrc3": float(curve[best]),
        "nrc3_gamma": float(gammas[best]),
        "nrc3_gamma_ratio": float(gammas[best] / lam_min),
        "evr": float(np.sum(s[:t] ** 2) / np.sum(s**2)),
        "mse": float(np.mean(resid**2)),
        "r2": float(1.0 - np.sum(resid**2) / np.sum(yc**2)),
    }
