"""Arrays already in memory -> one `Result`: validation, then the same pipeline as for files.

Owns `analyze_arrays`, the entry point for callers that hold features, labels or targets and a
head as arrays (the Python API, the UFM's numerical solutions). Never reads files.
Axes: N samples, D feature dim, K classes, T regression targets.
"""

from __future__ import annotations

import numpy as np

from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.passes import analyze_source
from ncinspect.io.sources import ArraySource, check_label_range, validate_arrays
from ncinspect.metrics.head import Head
from ncinspect.metrics.results import Result


def analyze_arrays(
    features: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    labels: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    outputs: np.ndarray | None = None,
    name: str = "<arrays>",
    options: AnalysisOptions | None = None,
) -> Result:
    """Analyse in-memory arrays: features (N, D), labels (N,) or targets (N, T), weight (K|T, D)."""
    features = np.asarray(features)
    weight = np.asarray(weight)
    if targets is not None:
        targets = np.asarray(targets, dtype=np.float64)
        if targets.ndim == 1:
            targets = targets.reshape(-1, 1)
    names = {r: r for r in ("features", "labels", "targets", "weight", "bias", "outputs")}
    task = validate_arrays(
        name,
        features_shape=features.shape,
        features_dtype=features.dtype,
        weight_shape=weight.shape,
        bias_shape=None if bias is None else np.shape(bias),
        labels_shape=None if labels is None else np.shape(labels),
        labels_dtype=None if labels is None else np.asarray(labels).dtype,
        targets_shape=None if targets is None else targets.shape,
        outputs_shape=None if outputs is None else np.shape(outputs),
        names=names,
    )
    if labels is not None:
        labels = np.asarray(labels)
        check_label_range(name, "labels", labels, weight.shape[0])
        labels = labels.astype(np.int64)
    source = ArraySource(
        path=name,
        task=task,
        n=features.shape[0],
        d=features.shape[1],
        head=Head(weight.astype(np.float64), None if bias is None else np.asarray(bias, float)),
        has_outputs=outputs is not None,
        features=features,
        labels=labels,
        targets=targets,
        outputs=outputs,
    )
    return analyze_source(source, options)
