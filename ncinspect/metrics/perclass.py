"""Per-class tables: the most and the least frequent classes, one row of statistics each.

With K in the tens of thousands (a vocabulary) and token frequencies spanning orders of
magnitude, one number per store hides how collapse differs between frequent and rare classes.
`class_table` ranks the classes with samples by count (descending, ties to the lower index) and
gives, for the `top` most frequent and the `top` least frequent of them (the first and last
ranks, disjoint: every class once when there are at most 2 x top), the columns of
`PER_CLASS_COLUMNS`.

Reads only what the analysis already keeps per class (`metrics.classification.
classification_extras`: counts, means, m2, the head, the per-class hits of pass 2): O(K D)
arithmetic, no pass over the rows, no K x K. Axes: K classes, D feature dim.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ncinspect.stats.classification import ClassMoments

# column -> (what it is, direction), in display order; the docs' per-class table mirrors it
PER_CLASS_COLUMNS: dict[str, tuple[str, str]] = {
    "count": ("n_k, the class's samples", "-"),
    "share": ("n_k / N", "-"),
    "recall": ("fraction of the class's samples whose argmax_j (w_j . h + b_j) is k", "higher"),
    "ncc_recall": ("fraction whose nearest class mean is mu_k", "higher"),
    "within_var": ("(1/n_k) sum_{i in k} ||h_i - mu_k||^2 = tr(Sigma_W^k)", "lower"),
    "mean_norm": ("||mu_k - mu_G||", "-"),
    "rel_var": ("within_var / mean_norm^2", "lower"),
    "weight_norm": ("||w_k||", "-"),
    "duality": ("cos(w_k, mu_k - mu_G), the class's term of unc3", "higher"),
}


def class_table(extras: dict[str, Any], top: int, global_mean: str = "weighted") -> dict[str, Any]:
    """The per-class table of one result from its `extras`: {"top", "classes" (how many have
    samples), "most_frequent": [row, ...], "least_frequent": [row, ...]}; a row holds "class",
    "rank" (1 = the most frequent) and the `PER_CLASS_COLUMNS`, NaN where undefined (no head, a
    zero vector, counts a stats-only store did not keep). mu_G as the metrics form it
    (`global_mean`)."""
    counts = np.asarray(extras["counts"], dtype=np.int64)
    means = np.asarray(extras["class_means"], dtype=np.float64)
    moments = ClassMoments(counts=counts, means=means, m2=np.asarray(extras["within_ss"]))
    present = np.flatnonzero(counts > 0)
    index = np.arange(counts.size)
    down = present[np.lexsort((index[present], -counts[present]))]  # count desc, index asc
    most = down[: max(0, top)]
    least = down[max(most.size, down.size - max(0, top)) :]
    rank = np.empty(counts.size, dtype=np.int64)
    rank[down] = np.arange(1, down.size + 1)
    columns = _columns(moments, extras, np.concatenate([most, least]), global_mean)

    def rows(classes: np.ndarray, offset: int) -> list[dict[str, Any]]:
        out = []
        for j, c in enumerate(classes):
            row: dict[str, Any] = {"class": int(c), "rank": int(rank[c])}
            row.update({key: columns[key][offset + j] for key in PER_CLASS_COLUMNS})
            row["count"] = int(row["count"])
            out.append(row)
        return out

    return {
        "top": int(top),
        "classes": int(present.size),
        "most_frequent": rows(most, 0),
        "least_frequent": rows(least, most.size),
    }


def _columns(
    moments: ClassMoments, extras: dict[str, Any], classes: np.ndarray, global_mean: str
) -> dict[str, np.ndarray]:
    """Every column for `classes` (C,): float64 arrays, NaN where undefined."""
    counts = moments.counts[classes].astype(np.float64)
    n = max(moments.n, 1)
    centred = moments.means[classes] - moments.global_mean(global_mean)
    mean_norm = np.linalg.norm(centred, axis=1)
    within = moments.m2[classes] / counts
    nan = np.full(classes.size, np.nan)
    weight = extras.get("weight")
    weight_norm, duality = nan, nan
    if weight is not None:
        w = np.asarray(weight, dtype=np.float64)[classes]
        weight_norm = np.linalg.norm(w, axis=1)
        scale = weight_norm * mean_norm
        with np.errstate(invalid="ignore", divide="ignore"):
            duality = np.where(scale > 0, np.einsum("cd,cd->c", w, centred) / scale, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel_var = np.where(mean_norm > 0, within / mean_norm**2, np.nan)
    return {
        "count": counts,
        "share": counts / n,
        "recall": _fraction(extras.get("class_correct"), classes, counts),
        "ncc_recall": _fraction(extras.get("class_ncc_correct"), classes, counts),
        "within_var": within,
        "mean_norm": mean_norm,
        "rel_var": rel_var,
        "weight_norm": weight_norm,
        "duality": duality,
    }


def _fraction(hits: Any, classes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """hits[classes] / counts, or NaN for every class when the hits were not counted."""
    if hits is None:
        return np.full(classes.size, np.nan)
    return np.asarray(hits, dtype=np.float64)[classes] / counts
