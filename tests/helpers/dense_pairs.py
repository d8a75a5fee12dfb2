"""The pair keys as ncinspect computed them before issue #15: whole K x K Gram matrices.

A test oracle for the tiled reductions of `ncinspect.metrics.pairs`: the same arithmetic on the
dense Mc Mc^T, W W^T and W Mc^T (the upper triangle by a boolean mask, E_K built whole), so the
tiled values must equal these to float64 rounding for any tile size. O(K^2) memory: small K only.
Undefined values are NaN.
"""

from __future__ import annotations

import math

import numpy as np

from ncinspect.metrics.classification import centred_means
from ncinspect.metrics.head import Head
from ncinspect.stats.classification import ClassMoments

PAIR_KEYS = (
    "nc1_cdnv",
    "nc2_equiangle_means",
    "nc2_maxangle_means",
    "nc2_etf_means",
    "nc2_equiangle_weights",
    "nc2_maxangle_weights",
    "nc2_etf_weights",
    "nc3_etf",
)


def upper(mat: np.ndarray) -> np.ndarray:
    """Entries above the diagonal, row by row (np.triu_indices order)."""
    return mat[~np.tri(mat.shape[0], mat.shape[0], 0, dtype=bool)]


def etf_target(k: int) -> np.ndarray:
    return (np.eye(k) - np.full((k, k), 1.0 / k)) / math.sqrt(k - 1)


def cdnv(mc: np.ndarray, var: np.ndarray) -> float:
    if mc.shape[0] < 2:
        return math.nan
    sq = np.einsum("kd,kd->k", mc, mc)
    d2 = upper(sq[:, None] + sq[None, :] - 2.0 * (mc @ mc.T))
    if np.any(d2 <= 0):
        return math.nan
    return float(np.mean(upper(var[:, None] + var[None, :]) / (2.0 * d2)))


def angles(vectors: np.ndarray) -> tuple[float, float]:
    """(equiangle, maxangle) over the non-zero rows."""
    norms = np.linalg.norm(vectors, axis=1)
    nonzero = norms > 0
    if int(nonzero.sum()) < 2:
        return math.nan, math.nan
    g = vectors[nonzero] @ vectors[nonzero].T
    kept = norms[nonzero]
    cos = upper(g / kept[:, None] / kept[None, :])
    eq = float(cos.std(ddof=1)) if cos.size >= 2 else math.nan
    return eq, float(np.mean(np.abs(cos + 1.0 / (int(nonzero.sum()) - 1))))


def etf_distance(gram: np.ndarray) -> float:
    k = gram.shape[0]
    if k < 2:
        return math.nan
    norm = np.linalg.norm(gram)
    if norm == 0:
        return math.nan
    return float(np.linalg.norm(gram / norm - etf_target(k)))


def dense_pair_metrics(
    moments: ClassMoments, head: Head | None, global_mean: str = "weighted"
) -> dict[str, float]:
    """Every key of `PAIR_KEYS` (the weight keys NaN without a head)."""
    present = moments.counts > 0
    mc = centred_means(moments, global_mean)
    var = moments.m2[present] / moments.counts[present]
    out = {"nc1_cdnv": cdnv(mc, var)}
    out["nc2_equiangle_means"], out["nc2_maxangle_means"] = angles(mc)
    out["nc2_etf_means"] = etf_distance(mc @ mc.T)
    if head is None:
        return {**{key: math.nan for key in PAIR_KEYS}, **out}
    w = np.asarray(head.weight, dtype=np.float64)
    out["nc2_equiangle_weights"], out["nc2_maxangle_weights"] = angles(w)
    out["nc2_etf_weights"] = etf_distance(w @ w.T)
    out["nc3_etf"] = etf_distance(w[present] @ mc.T)
    return out
