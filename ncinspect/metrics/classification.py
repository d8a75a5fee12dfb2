"""Classification neural-collapse metrics (NC1-NC4) as pure functions of finalized statistics.

Owns every classification key (definitions and edge cases in docs/metrics.md): nc1 and nc1_cdnv
(within- vs between-class variability), separation_fuzziness (K_eff x nc1, the law of data
separation's F), ncc_accuracy (the nearest-class-mean rule's accuracy, head or no head), the
nc2 equinorm / equiangle / maxangle / ETF errors of the centred class means and of the
classifier rows, nc3 and nc3_etf (self-duality), nc4 (the
classifier's disagreement with the nearest class mean), accuracy and bias_gap, the descriptive
norms (mean_norm_means, mean_norm_weights, mean_norm_features, norm_ratio), with their edge
cases (empty classes -> K_eff, K - 1 > D floors, undefined -> NaN with a reason; without a head,
`HEAD_KEYS` undefined), under either global mean (`global_mean`: "weighted", the sample mean,
or "unweighted", the plain mean of the class means). Never reads data: it takes
`stats.classification`'s `ClassMoments` and `ClassScatter` and the head. Never holds a K x K
matrix either: the pair keys (nc1_cdnv, nc2 equiangle / maxangle / ETF, nc3_etf) reduce the
tiles of Mc Mc^T, W W^T and W Mc^T (`metrics.pairs`), one sweep per matrix; memory O(K D).

Direction: every metric here is lower-is-more-collapsed (0 at exact collapse; bias_gap 0 when
W mu_G + b = 0) except `accuracy`, which is higher-is-better, `ncc_accuracy`, which is
higher-is-more-collapsed, and the four norms, which describe the geometry and are not scores.
Axes: N samples, D feature dim, K classes (K_eff of them with samples).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ncinspect.metrics.head import HEAD_ABSENT, NO_CLASSIFIER, Head
from ncinspect.metrics.keys import CLASSIFICATION_KEYS
from ncinspect.metrics.pairs import (
    EtfDistance,
    PairMatrix,
    PairMoments,
    PairSum,
    PairTile,
    sweep,
)
from ncinspect.metrics.results import MetricSet
from ncinspect.metrics.uniformity import Energies, energies_for, uniform_duality
from ncinspect.stats.classification import ClassMoments, ClassScatter

EIG_RELATIVE_CUTOFF = 1e-10
# A centred class mean this small relative to the means themselves is float64 rounding of mu_G,
# not geometry: it is treated as exactly zero (so identical means give NaN, not 1e31).
ROUNDING_RELATIVE = 1e-13


def centred_means(moments: ClassMoments, global_mean: str = "weighted") -> np.ndarray:
    """Mc: rows mu_k - mu_G of the present classes, with rounding-level rows snapped to zero.
    global_mean: how mu_G is formed (`ClassMoments.global_mean`)."""
    present = moments.counts > 0
    means = moments.means[present]
    mc = means - moments.global_mean(global_mean)
    scale = float(np.max(np.linalg.norm(means, axis=1), initial=0.0))
    tiny = np.linalg.norm(mc, axis=1) <= ROUNDING_RELATIVE * scale
    mc[tiny] = 0.0
    return mc


def _kept_eigen(mat: np.ndarray, max_rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs kept by the pinv rule (docs/metrics.md): the top `max_rank`, each > 1e-10 x the
    largest."""
    vals, vecs = np.linalg.eigh((mat + mat.T) / 2)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    if vals.size == 0 or vals[0] <= 0:
        return vals[:0], vecs[:, :0]
    keep = np.flatnonzero(vals > EIG_RELATIVE_CUTOFF * vals[0])[:max_rank]
    return vals[keep], vecs[:, keep]


def nc1(
    moments: ClassMoments, scatter: ClassScatter, out: MetricSet, global_mean: str = "weighted"
) -> None:
    """nc1 = tr(Sigma_W pinv(Sigma_B)) / K_eff, through whichever exact route pass 2 used, and
    separation_fuzziness = tr(Sigma_W pinv(Sigma_B)) = K_eff x nc1 (the same pinv; undefined
    when nc1 is). Sigma_W does not depend on mu_G; Sigma_B = Mc^T Mc / K_eff does
    (`global_mean`).

    The class-span scatter S_w is pass 2's projection on the sample-weighted Mc_w
    (`plan_scatter`), and serves the unweighted mean too (a stats-only store's saved scatter
    included): there Mc = C Mc_w with C = I - 11^T/K_eff, the projector onto the complement of
    1, which also holds the range of G = Mc Mc^T, so tr(C S_w C pinv(G)^2) = tr(S_w pinv(G)^2).
    """
    present = moments.counts > 0
    k_eff = int(present.sum())
    n = moments.n
    mc = centred_means(moments, global_mean)
    max_rank = min(k_eff - 1, moments.d)
    if k_eff < 2:
        reason = f"needs at least 2 classes with samples (K_eff = {k_eff})"
        out.undefined("nc1", reason)
        out.undefined("separation_fuzziness", reason)
        out.info["nc1_rank"] = 0
        return
    if scatter.route == "class_span":  # chosen when K_eff < D: K_eff x K_eff < D x D
        gram = mc @ mc.T
        vals, vecs = _kept_eigen(gram, max_rank)
        s = scatter.scatter / n
        value = float(np.trace(s @ (vecs / vals**2) @ vecs.T)) if vals.size else math.nan
        fuzziness = value * k_eff
    else:
        sigma_b = mc.T @ mc / k_eff
        vals, vecs = _kept_eigen(sigma_b, max_rank)
        sigma_w = scatter.scatter / n
        fuzziness = float(np.trace(sigma_w @ (vecs / vals) @ vecs.T)) if vals.size else math.nan
        value = fuzziness / k_eff
    out.info["nc1_rank"] = int(vals.size)
    out.info["nc1_route"] = "class_span_KxK" if scatter.route == "class_span" else "features_DxD"
    if not vals.size:
        reason = "the between-class covariance is zero (all class means coincide)"
        out.undefined("nc1", reason)
        out.undefined("separation_fuzziness", reason)
        return
    out.metrics["nc1"] = value
    out.metrics["separation_fuzziness"] = fuzziness


class _Cdnv:
    """nc1_cdnv's reduction over the pairs i < j of a tile of Mc Mc^T: (s_i^2 + s_j^2) /
    (2 ||mu_i - mu_j||^2), with ||mu_i - mu_j||^2 = ||c_i||^2 + ||c_j||^2 - 2 c_i . c_j
    (sq (K_eff,) = ||c_i||^2, var (K_eff,) = s_i^2). A pair at distance <= 0 makes it undefined."""

    def __init__(self, sq: np.ndarray, var: np.ndarray) -> None:
        self.sq, self.var = sq, var
        self.ratios = PairSum()
        self.coincide = False

    def add(self, t: PairTile) -> None:
        if self.coincide:
            return
        dist2 = self.sq[t.rows, None] + self.sq[None, t.cols]
        dist2 -= 2.0 * t.values
        ratio = self.var[t.rows, None] + self.var[None, t.cols]
        with np.errstate(divide="ignore", invalid="ignore"):  # below the diagonal: unused
            ratio /= 2.0 * dist2
        for d2, part in zip(t.pair_parts(dist2), t.pair_parts(ratio), strict=True):
            # min first (no temporary); a NaN distance alone is no coincidence
            if d2.size and not d2.min() > 0 and np.any(d2 <= 0):
                self.coincide = True
                return
            self.ratios.add(part)

    def record(self, out: MetricSet) -> None:
        if self.coincide:
            out.undefined("nc1_cdnv", "two class means coincide (zero distance between them)")
        else:
            out.metrics["nc1_cdnv"] = self.ratios.mean


class _Cosines:
    """The cosines of the pairs i < j of non-zero rows from a tile of their Gram matrix (entries
    over the products of the norms, no second product): their std (equiangle) and the mean of
    |cos + 1/(K - 1)| (maxangle), K counting the non-zero rows; passed on to `energies` (the
    hyperspherical energies of the same rows) when given."""

    def __init__(self, norms: np.ndarray, energies: Energies | None = None) -> None:
        nonzero = norms > 0
        self.energies = energies
        self.norms = norms
        self.dropped = int((~nonzero).sum())
        self.keep = None if not self.dropped else nonzero
        self.used = int(nonzero.sum())
        self.offset = 1.0 / (self.used - 1) if self.used >= 2 else math.nan
        self.cosines = PairMoments()
        self.maxangle = PairSum()

    def add(self, t: PairTile) -> None:
        if self.used < 2:
            return
        with np.errstate(divide="ignore", invalid="ignore"):  # zero rows: not kept
            cos = t.values / self.norms[t.rows, None]
            cos /= self.norms[None, t.cols]
        for part in t.pair_parts(cos, self.keep):
            self.cosines.add(part)
            if self.energies is not None:
                self.energies.add_cosines(part)
            shifted = part + self.offset
            self.maxangle.add(np.abs(shifted, out=shifted))

    def record(self, suffix: str, what: str, out: MetricSet) -> None:
        """Equiangle and maxangle; a warning about the dropped zero vectors."""
        if self.dropped:
            out.warn(f"{self.dropped} {what} vector(s) are zero; dropped from the angle metrics")
        eq, mx = f"nc2_equiangle_{suffix}", f"nc2_maxangle_{suffix}"
        if self.used < 2:
            out.undefined(eq, f"needs at least 2 non-zero {what} vectors")
            out.undefined(mx, f"needs at least 2 non-zero {what} vectors")
            return
        if self.cosines.count < 2:
            out.undefined(eq, f"the std over pairs needs at least 3 {what} vectors (got 2)")
        else:
            out.metrics[eq] = self.cosines.std(ddof=1)
        out.metrics[mx] = self.maxangle.mean


def _equinorm(vectors: np.ndarray, key: str, out: MetricSet) -> None:
    k = vectors.shape[0]
    if k < 2:
        out.undefined(key, f"needs at least 2 vectors (got {k})")
        return
    norms = np.linalg.norm(vectors, axis=1)
    mean = norms.mean()
    if mean == 0:
        out.undefined(key, "all vectors are zero")
        return
    out.metrics[key] = float(norms.std(ddof=1) / mean)


def _etf(pairs: PairMatrix) -> EtfDistance | str:
    """The ETF distance's reduction for a square pair matrix, or why it is undefined (K < 2, or
    a zero matrix)."""
    k = pairs.shape[0]
    if k < 2:
        return f"needs at least 2 classes (got {k})"
    norm = pairs.norm()
    if norm == 0:
        return "the Gram matrix is zero"
    return EtfDistance(k, norm, pairs.upper)


def _record_etf(etf: EtfDistance | str, key: str, out: MetricSet) -> None:
    if isinstance(etf, str):
        out.undefined(key, etf)
    else:
        out.metrics[key] = etf.value


# The keys that need the classifier: its rows (nc2_*_weights, nc3, nc3_etf), its decisions
# (nc4, accuracy) or its bias (bias_gap).
HEAD_KEYS = (
    "nc2_equinorm_weights",
    "nc2_equiangle_weights",
    "nc2_maxangle_weights",
    "nc2_etf_weights",
    "nc3",
    "nc3_etf",
    "nc4",
    "accuracy",
    "bias_gap",
    "mean_norm_weights",
    "norm_ratio",
    "unc3",
)

# Why ncc_accuracy is null for a stats-only store written before ClassScatter counted it.
NO_NCC_COUNT = (
    "the saved statistics predate the nearest-class-mean count (a stats-only store written by "
    "an older ncinspect); re-run extract --stats-only"
)

# Why mean_norm_features is null for a source without rows.
NO_ROWS = (
    "needs a pass over the feature rows (the sum of ||h_i - mu_G||), which the saved statistics "
    "do not keep"
)


def classification_metrics(
    moments: ClassMoments,
    scatter: ClassScatter,
    head: Head | None,
    outputs_correct: int | None = None,
    global_mean: str = "weighted",
    *,
    tile: int | None = None,
) -> MetricSet:
    """All classification keys from pass-1 and pass-2 statistics and the head.

    head None (a dump without one): the head-free keys (nc1, nc1_cdnv, nc2_*_means and the
    means' and features' norms) as usual, `HEAD_KEYS` undefined with the reason `NO_CLASSIFIER`,
    except accuracy when the stored logits gave `outputs_correct` (rows whose logits' argmax is
    the label). global_mean: "weighted" (mu_G the sample mean) or "unweighted" (the mean of the
    present class means), for every key that centres on mu_G; the scatter's `centre_distance`
    must have been summed about the same mu_G (`plan_scatter`'s `global_mean`).

    The pair keys reduce Mc Mc^T, W W^T and W Mc^T tile by tile (`metrics.pairs`): memory
    O(tile x K), never K x K. tile: rows per tile (None: about `pairs.TILE_BYTES`); the values
    do not depend on it beyond float64 rounding.
    """
    out = MetricSet()
    out.info["global_mean"] = global_mean
    k_eff = _class_warnings(moments, head, out)
    mc = centred_means(moments, global_mean)
    nc1(moments, scatter, out, global_mean)
    energies = _mean_geometry(moments, mc, k_eff, out, tile)
    energies.record(out)
    _norms(mc, scatter, head, out)
    ncc_accuracy(scatter, out)
    if head is None:
        _without_head(moments, out, outputs_correct)
    else:
        _head_metrics(moments, scatter, head, mc, out, moments.global_mean(global_mean), tile)
    out.metrics = {key: out.metrics[key] for key in CLASSIFICATION_KEYS}
    return out


def ncc_accuracy(scatter: ClassScatter, out: MetricSet) -> None:
    """ncc_accuracy = the fraction of rows whose nearest present class mean (ties to the lowest
    index; the rule nc4 compares the classifier with) is their label: pass 2's `ncc_correct / n`.
    Needs no head. Higher is more collapsed; `NO_NCC_COUNT` when the statistics lack the count."""
    if not scatter.ncc_counted:
        out.undefined("ncc_accuracy", NO_NCC_COUNT)
    elif scatter.n == 0:
        out.undefined("ncc_accuracy", "no rows")
    else:
        out.metrics["ncc_accuracy"] = scatter.ncc_correct / scatter.n


def _norms(mc: np.ndarray, scatter: ClassScatter, head: Head | None, out: MetricSet) -> None:
    """mean_norm_means = mean_k ||mu_k - mu_G||, mean_norm_features = (1/N) sum_i ||h_i - mu_G||
    (from pass 2's `centre_distance`; `NO_ROWS` without it) and, with a head,
    mean_norm_weights = mean_k ||w_k|| over all K rows and norm_ratio = mean_norm_weights /
    mean_norm_means. Descriptive, not scores."""
    mean_means = float(np.linalg.norm(mc, axis=1).mean())
    out.metrics["mean_norm_means"] = mean_means
    if scatter.centre_distance is None:
        out.undefined("mean_norm_features", NO_ROWS)
    else:
        out.metrics["mean_norm_features"] = scatter.centre_distance / scatter.n
    if head is None:
        return
    mean_weights = float(np.linalg.norm(np.asarray(head.weight, dtype=np.float64), axis=1).mean())
    out.metrics["mean_norm_weights"] = mean_weights
    if mean_means == 0:
        out.undefined("norm_ratio", "the centred class means are all zero (mean_norm_means = 0)")
    else:
        out.metrics["norm_ratio"] = mean_weights / mean_means


def _class_warnings(moments: ClassMoments, head: Head | None, out: MetricSet) -> int:
    """Empty and single-sample classes, and the ETF floors when K - 1 > D; returns K_eff."""
    k, d = moments.k, moments.d
    present = moments.counts > 0
    k_eff = int(present.sum())
    out.info["k_eff"] = k_eff
    if k_eff < k:
        missing = np.flatnonzero(~present).tolist()
        shown = ", ".join(str(c) for c in missing[:10]) + (", ..." if len(missing) > 10 else "")
        out.warn(
            f"{k - k_eff} of {k} classes have no samples (classes {shown}); mean-based metrics "
            f"use K_eff = {k_eff}"
        )
        out.info["empty_classes"] = missing
    singles = int(np.count_nonzero(moments.counts == 1))
    if singles:
        out.warn(f"{singles} class(es) have a single sample (zero within-class scatter)")
    if k_eff - 1 > d:
        out.warn(
            f"K_eff - 1 = {k_eff - 1} > D = {d}: an exact simplex ETF cannot exist, so the "
            "nc2 angle/ETF errors of the means have a positive floor"
        )
        out.info["etf_floor_means"] = True
    if k - 1 > d and head is not None:
        if k_eff - 1 <= d:
            out.warn(
                f"K - 1 = {k - 1} > D = {d}: the nc2 weight angle/ETF errors have a positive floor"
            )
        out.info["etf_floor_weights"] = True
    return k_eff


def _mean_geometry(
    moments: ClassMoments, mc: np.ndarray, k_eff: int, out: MetricSet, tile: int | None
) -> Energies:
    """nc1_cdnv and nc2_equinorm / equiangle / maxangle / etf of the centred class means Mc
    (K_eff, D): the pair keys in one sweep over the upper tiles of Mc Mc^T (K_eff x K_eff),
    whose cosines also feed the hyperspherical energies (returned, for the caller to record).
    nc1_cdnv's distances between means do not depend on mu_G."""
    gram = PairMatrix(mc, upper=True, tile=tile)
    cdnv = cosines = None
    energies = energies_for(mc, moments.d)
    if k_eff >= 2:
        present = moments.counts > 0
        var = moments.m2[present] / moments.counts[present]
        cdnv = _Cdnv(np.einsum("kd,kd->k", mc, mc), var)
        cosines = _Cosines(np.linalg.norm(mc, axis=1), energies)
    etf = _etf(gram)
    sweep(gram, (cdnv, cosines, None if isinstance(etf, str) else etf))
    if cdnv is None:
        out.undefined("nc1_cdnv", f"needs at least 2 classes with samples (K_eff = {k_eff})")
    else:
        cdnv.record(out)
    _equinorm(mc, "nc2_equinorm_means", out)
    if cosines is None:
        for key in ("nc2_equiangle_means", "nc2_maxangle_means"):
            out.undefined(key, f"needs at least 2 classes with samples (K_eff = {k_eff})")
    else:
        cosines.record("means", "centred class-mean", out)
    _record_etf(etf, "nc2_etf_means", out)
    return energies


def _head_metrics(
    moments: ClassMoments,
    scatter: ClassScatter,
    head: Head,
    mc: np.ndarray,
    out: MetricSet,
    mu_g: np.ndarray,
    tile: int | None,
) -> None:
    """`HEAD_KEYS` but the norms (`_norms`): the classifier rows' geometry (one sweep over the
    upper tiles of W W^T, K x K), self-duality (nc3_etf over the tiles of W Mc^T, K_eff x
    K_eff), NC4, accuracy and bias_gap (at the global mean mu_g (D,), the one Mc is centred
    on)."""
    n = moments.n
    w = np.asarray(head.weight, dtype=np.float64)
    w_p = w[moments.counts > 0]
    uniform_duality(w_p, mc, out)
    gram = PairMatrix(w, upper=True, tile=tile)
    cosines = _Cosines(np.linalg.norm(w, axis=1)) if w.shape[0] >= 2 else None
    etf = _etf(gram)
    sweep(gram, (cosines, None if isinstance(etf, str) else etf))
    _equinorm(w, "nc2_equinorm_weights", out)
    if cosines is None:
        for key in ("nc2_equiangle_weights", "nc2_maxangle_weights"):
            out.undefined(key, "needs at least 2 classifier rows (K = 1)")
    else:
        cosines.record("weights", "classifier-row", out)
    _record_etf(etf, "nc2_etf_weights", out)

    w_norm, m_norm = np.linalg.norm(w_p), np.linalg.norm(mc)
    if w_norm == 0 or m_norm == 0:
        out.undefined("nc3", "the classifier rows or the centred class means are all zero")
    else:
        out.metrics["nc3"] = float(np.linalg.norm(w_p / w_norm - mc / m_norm) ** 2)
    duality = PairMatrix(w_p, mc, tile=tile)
    etf = _etf(duality)
    sweep(duality, (None if isinstance(etf, str) else etf,))
    _record_etf(etf, "nc3_etf", out)

    out.metrics["nc4"] = scatter.ncc_mismatch / n
    out.metrics["accuracy"] = scatter.correct / n
    out.metrics["bias_gap"] = float(np.linalg.norm(w @ mu_g + head.bias_or_zeros()))
    if head.bias is None:
        out.info["bias"] = "absent (treated as zero)"


def _without_head(moments: ClassMoments, out: MetricSet, outputs_correct: int | None) -> None:
    """`HEAD_KEYS` undefined (`NO_CLASSIFIER`), but accuracy from the stored logits if given."""
    out.info["head"] = HEAD_ABSENT
    keys: tuple[str, ...] = HEAD_KEYS
    if outputs_correct is not None:
        out.metrics["accuracy"] = outputs_correct / moments.n
        out.info["accuracy_from"] = "outputs (the argmax of the stored logits)"
        keys = tuple(key for key in HEAD_KEYS if key != "accuracy")
    out.undefined_all(keys, NO_CLASSIFIER)


def classification_extras(
    moments: ClassMoments, head: Head | None, scatter: ClassScatter | None = None
) -> dict[str, Any]:
    """The statistics later stages need beside the metrics (`ufm.ufm_distance`, the per-class
    tables of `metrics.perclass`): the head (weight (K, D), bias (K,); both None without a
    head), class means (K, D), counts (K,), within-class sums of squares m2 (K,) and, from pass
    2, the per-class counts of rows the classifier and the nearest class mean get right (K,;
    None when not counted). K x D floats, the size of the weight itself."""
    return {
        "weight": None if head is None else np.asarray(head.weight, dtype=np.float64),
        "bias": None if head is None else head.bias_or_zeros(),
        "class_means": moments.means,
        "counts": moments.counts,
        "within_ss": moments.m2,
        "class_correct": None if scatter is None else scatter.class_correct,
        "class_ncc_correct": None if scatter is None else scatter.class_ncc_correct,
    }
