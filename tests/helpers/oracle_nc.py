"""A deliberately naive reference for every classification key of docs/metrics.md.

Written straight from the spec text, independently of ncinspect (which it never imports): explicit
loops over samples and class pairs, full N x D matrices, Sigma_W as a D x D matrix with divisor N,
Sigma_B = Mc^T Mc / K_eff, pinv by a dense eigendecomposition. Slow on purpose; only for tests.

Empty classes follow the spec's edge cases: mean-based metrics use the K_eff present classes (and
K_eff in 1/K and 1/(K-1)); nc3 / nc3_etf use the present classes and their rows of W; the
nc2_*_weights metrics use all K rows of W; accuracy and nc4 take the argmax over all K outputs and
the nearest class mean over the K_eff present means. Undefined values are NaN, with a reason in
`OracleResult.undefined`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

EIG_CUTOFF = 1e-10

KEYS = (
    "nc1",
    "nc1_cdnv",
    "nc2_equinorm_means",
    "nc2_equinorm_weights",
    "nc2_equiangle_means",
    "nc2_equiangle_weights",
    "nc2_maxangle_means",
    "nc2_maxangle_weights",
    "nc2_etf_means",
    "nc2_etf_weights",
    "nc3",
    "nc3_etf",
    "nc4",
    "accuracy",
    "bias_gap",
    "mean_norm_means",
    "mean_norm_weights",
    "mean_norm_features",
    "norm_ratio",
    "separation_fuzziness",
    "ncc_accuracy",
    "gnc2_log",
    "gnc2_riesz",
    "unc3",
)


@dataclass
class OracleResult:
    metrics: dict[str, float] = field(default_factory=dict)
    undefined: dict[str, str] = field(default_factory=dict)
    k_eff: int = 0
    nc1_rank: int = 0
    class_means: np.ndarray | None = None  # (K_eff, D) present-class means
    present: list[int] = field(default_factory=list)

    def nan(self, key: str, reason: str) -> None:
        self.metrics[key] = math.nan
        self.undefined[key] = reason


def etf_target(k: int) -> np.ndarray:
    """E_K = (I_K - 11^T / K) / sqrt(K - 1), written entry by entry."""
    e = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            e[i, j] = ((1.0 if i == j else 0.0) - 1.0 / k) / math.sqrt(k - 1)
    return e


def _frob(a: np.ndarray) -> float:
    return math.sqrt(float(np.sum(a * a)))


def _sample_std(values: list[float]) -> float:
    """Standard deviation with divisor (count - 1), written out."""
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _pair_cosines(vectors: np.ndarray) -> tuple[list[float], int]:
    """Cosines over unordered pairs k < k' of the non-zero rows; returns (cosines, rows used)."""
    rows = [v for v in vectors if float(np.linalg.norm(v)) > 0.0]
    cos = []
    for a in range(len(rows)):
        for b in range(a + 1, len(rows)):
            na = math.sqrt(float(rows[a] @ rows[a]))
            nb = math.sqrt(float(rows[b] @ rows[b]))
            cos.append(float(rows[a] @ rows[b]) / (na * nb))
    return cos, len(rows)


def _equinorm(vectors: np.ndarray, key: str, out: OracleResult) -> None:
    if vectors.shape[0] < 2:
        out.nan(key, "fewer than 2 vectors")
        return
    norms = [math.sqrt(float(v @ v)) for v in vectors]
    mean = sum(norms) / len(norms)
    if mean == 0.0:
        out.nan(key, "all vectors zero")
        return
    out.metrics[key] = _sample_std(norms) / mean


def _angles(vectors: np.ndarray, suffix: str, out: OracleResult) -> None:
    cos, used = _pair_cosines(vectors)
    eq, mx = f"nc2_equiangle_{suffix}", f"nc2_maxangle_{suffix}"
    if used < 2:
        out.nan(eq, "fewer than 2 non-zero vectors")
        out.nan(mx, "fewer than 2 non-zero vectors")
        return
    if len(cos) < 2:
        out.nan(eq, "a std over pairs needs at least 2 pairs (K >= 3)")
    else:
        out.metrics[eq] = _sample_std(cos)
    out.metrics[mx] = sum(abs(c + 1.0 / (used - 1)) for c in cos) / len(cos)


def _etf_distance(gram: np.ndarray, key: str, out: OracleResult) -> None:
    k = gram.shape[0]
    if k < 2:
        out.nan(key, "fewer than 2 classes")
        return
    norm = _frob(gram)
    if norm == 0.0:
        out.nan(key, "zero Gram matrix")
        return
    out.metrics[key] = _frob(gram / norm - etf_target(k))


def classification_oracle(
    features: np.ndarray,
    labels: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
) -> OracleResult:
    """Every classification key, from the raw arrays, the slow way."""
    h = np.asarray(features, dtype=np.float64)
    y = [int(v) for v in labels]
    w = np.asarray(weight, dtype=np.float64)
    k = w.shape[0]
    b = np.zeros(k) if bias is None else np.asarray(bias, dtype=np.float64)
    n, d = h.shape
    out = OracleResult()

    # Class counts and means by explicit accumulation.
    counts = [0] * k
    sums = [np.zeros(d) for _ in range(k)]
    for i in range(n):
        counts[y[i]] += 1
        sums[y[i]] = sums[y[i]] + h[i]
    present = [c for c in range(k) if counts[c] > 0]
    k_eff = len(present)
    out.k_eff = k_eff
    out.present = present
    means = {c: sums[c] / counts[c] for c in present}
    mu_g = np.zeros(d)
    for i in range(n):
        mu_g = mu_g + h[i]
    mu_g = mu_g / n
    mc = np.array([means[c] - mu_g for c in present]).reshape(k_eff, d)
    out.class_means = np.array([means[c] for c in present]).reshape(k_eff, d)
    w_p = w[present]

    # nc1: Sigma_W (D x D, divisor N) and Sigma_B = Mc^T Mc / K_eff; pinv from eigh.
    dev = np.array([h[i] - means[y[i]] for i in range(n)])  # full N x D
    sigma_w = np.zeros((d, d))
    for i in range(n):
        sigma_w += np.outer(dev[i], dev[i])
    sigma_w /= n
    if k_eff < 2:
        out.nan("nc1", "fewer than 2 classes with samples")
        out.nan("separation_fuzziness", "fewer than 2 classes with samples")
    else:
        sigma_b = np.zeros((d, d))
        for row in mc:
            sigma_b += np.outer(row, row)
        sigma_b /= k_eff
        vals, vecs = np.linalg.eigh(sigma_b)
        order = np.argsort(vals)[::-1]
        vals, vecs = vals[order], vecs[:, order]
        largest = vals[0]
        keep = []
        if largest > 0:
            for j in range(min(k_eff - 1, d)):
                if vals[j] > EIG_CUTOFF * largest:
                    keep.append(j)
        out.nc1_rank = len(keep)
        if not keep:
            out.nan("nc1", "between-class covariance is zero")
            out.nan("separation_fuzziness", "between-class covariance is zero")
        else:
            pinv = np.zeros((d, d))
            for j in keep:
                pinv += np.outer(vecs[:, j], vecs[:, j]) / vals[j]
            # the separation fuzziness of He & Su (2023): the trace itself, K_eff x nc1
            out.metrics["separation_fuzziness"] = float(np.trace(sigma_w @ pinv))
            out.metrics["nc1"] = float(np.trace(sigma_w @ pinv)) / k_eff

    # nc1_cdnv: double loop over present class pairs.
    if k_eff < 2:
        out.nan("nc1_cdnv", "fewer than 2 classes with samples")
    else:
        var = {}
        for c in present:
            tot = 0.0
            for i in range(n):
                if y[i] == c:
                    diff = h[i] - means[c]
                    tot += float(diff @ diff)
            var[c] = tot / counts[c]
        terms = []
        for a_i, a in enumerate(present):
            for c in present[a_i + 1 :]:
                diff = means[a] - means[c]
                dist2 = float(diff @ diff)
                if dist2 == 0.0:
                    terms = None
                    break
                terms.append((var[a] + var[c]) / (2.0 * dist2))
            if terms is None:
                break
        if terms is None:
            out.nan("nc1_cdnv", "two class means coincide")
        else:
            out.metrics["nc1_cdnv"] = sum(terms) / len(terms)

    # nc2: means over present classes, weights over all K rows.
    _equinorm(mc, "nc2_equinorm_means", out)
    _equinorm(w, "nc2_equinorm_weights", out)
    _angles(mc, "means", out)
    _angles(w, "weights", out)
    _etf_distance(mc @ mc.T, "nc2_etf_means", out)
    _etf_distance(w @ w.T, "nc2_etf_weights", out)

    # nc3 (Papyan) and nc3_etf (Zhu et al.) on present classes and their rows of W.
    wn, mn = _frob(w_p), _frob(mc)
    if wn == 0.0 or mn == 0.0:
        out.nan("nc3", "zero W or zero Mc")
    else:
        diff = w_p / wn - mc / mn
        out.metrics["nc3"] = float(np.sum(diff * diff))
    _etf_distance(w_p @ mc.T, "nc3_etf", out)

    # nc4 and accuracy: explicit logits and explicit distances, ties to the lowest index.
    mismatch = 0
    correct = 0
    ncc_correct = 0
    for i in range(n):
        logits = [float(w[c] @ h[i]) + float(b[c]) for c in range(k)]
        pred = 0
        for c in range(1, k):
            if logits[c] > logits[pred]:
                pred = c
        best, best_d = -1, math.inf
        for c in present:  # increasing class index; strict < keeps the lowest on ties
            diff = h[i] - means[c]
            dist = math.sqrt(float(diff @ diff))
            if dist < best_d:
                best, best_d = c, dist
        mismatch += int(pred != best)
        correct += int(pred == y[i])
        ncc_correct += int(best == y[i])
    out.metrics["nc4"] = mismatch / n
    out.metrics["accuracy"] = correct / n
    out.metrics["ncc_accuracy"] = ncc_correct / n

    gap = np.array([float(w[c] @ mu_g) + float(b[c]) for c in range(k)])
    out.metrics["bias_gap"] = math.sqrt(float(gap @ gap))

    # the norms: means over present classes, all K rows of W, and every sample
    norm_means = sum(_frob(row) for row in mc) / k_eff
    norm_weights = sum(_frob(row) for row in w) / k
    out.metrics["mean_norm_means"] = norm_means
    out.metrics["mean_norm_weights"] = norm_weights
    out.metrics["mean_norm_features"] = sum(_frob(h[i] - mu_g) for i in range(n)) / n
    if norm_means == 0.0:
        out.nan("norm_ratio", "zero centred class means")
    else:
        out.metrics["norm_ratio"] = norm_weights / norm_means
    _uniformity(mc, w_p, d, out)
    out.metrics = {key: out.metrics[key] for key in KEYS}
    return out


def _uniformity(mc: np.ndarray, w_p: np.ndarray, d: int, out: OracleResult) -> None:
    """gnc2_log, gnc2_riesz (s = D - 2, or 1 for D <= 2) and unc3, pair by pair in Python."""
    hats = [row / _frob(row) for row in mc if _frob(row) > 0]
    s = d - 2 if d > 2 else 1
    logs, riesz = [], []
    for i in range(len(hats)):
        for j in range(i + 1, len(hats)):
            dist = _frob(hats[i] - hats[j])
            logs.append(math.log(1.0 / dist))
            riesz.append(dist ** (-s))
    if logs:
        out.metrics["gnc2_log"] = sum(logs) / len(logs)
        out.metrics["gnc2_riesz"] = sum(riesz) / len(riesz)
    else:
        out.nan("gnc2_log", "fewer than 2 hat vectors")
        out.nan("gnc2_riesz", "fewer than 2 hat vectors")
    cos = [
        float(wk @ mk) / (_frob(wk) * _frob(mk))
        for wk, mk in zip(w_p, mc, strict=True)
        if _frob(wk) > 0 and _frob(mk) > 0
    ]
    if len(cos) < 2 or sum(cos) == 0:
        out.nan("unc3", "fewer than 2 classes, or a zero mean cosine")
    else:
        mean = sum(cos) / len(cos)
        var = sum((c - mean) ** 2 for c in cos) / (len(cos) - 1)
        out.metrics["unc3"] = math.sqrt(var) / mean
