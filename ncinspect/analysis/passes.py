"""The one pipeline: a source -> pass 1 -> plan -> pass 2 -> statistics -> metrics -> Result.

Owns `analyze_source`, the entry every analysis goes through (stores, dumps, in-memory arrays),
and the parts common to both tasks: refusing a head with NaN/Inf, the non-finite-row warning,
the reader's notes as warnings, `--min-count` (`analysis.frequent`), the per-class table
(`metrics.perclass`) and assembling the result record. The task's own passes and
metrics are `analysis.classification` and `analysis.regression`; a stats-only store's saved
statistics are `analysis.saved`'s; the calibration keys of the stored logits are
`analysis.calibration`'s. Reads data only through `FeatureSource`; computes no
statistic itself. A layer store's `layer` and `layer_order` attributes go into the result.
Memory: one read block (about 8 MiB of features) and the statistics, apart
from calibration's N confidences (and logits up to 32 MiB, held for the temperature fit).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ncinspect.analysis.calibration import add_calibration
from ncinspect.analysis.classification import classification_from_source, metrics_work
from ncinspect.analysis.frequent import min_count_source
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.regression import regression_from_source
from ncinspect.analysis.rows import MAX_FEATURE_ABS, FiniteRows
from ncinspect.analysis.saved import metrics_from_statistics
from ncinspect.errors import InputError, UsageError
from ncinspect.io.sources import FeatureSource
from ncinspect.metrics.head import NO_CLASSIFIER, NO_LAYER_HEAD, NO_REGRESSOR
from ncinspect.metrics.perclass import class_table
from ncinspect.metrics.results import MetricSet, Result
from ncinspect.stats.parallel import full_blas, release_scratch, worker_pass


def analyze_source(source: FeatureSource, options: AnalysisOptions | None = None) -> Result:
    """Compute every metric of the source's task and return one result record."""
    try:
        # numpy's BLAS on one thread for the whole analysis, metrics included (large steps get
        # its threads back: `full_blas`): multi-threaded BLAS calls after the passes would leave
        # a BLAS thread spinning into the next analysis's first pass
        with worker_pass():
            return _analyze_source(source, options or AnalysisOptions())
    finally:
        release_scratch()  # the passes' per-thread temporaries


def _analyze_source(source: FeatureSource, options: AnalysisOptions) -> Result:
    _epoch_of(source)  # a malformed epoch or layer attribute fails before any pass
    _layer_of(source)
    check_dense_size(source)
    _check_finite_head(source)
    left = None
    if source.task == "classification" and options.min_count > 1:
        source, left = min_count_source(source, options.min_count)
    if source.statistics is not None:  # saved by extract --stats-only: no rows to read
        # up to a D x D eigendecomposition; the pair sweeps, K^2 D
        work = float(source.d) ** 3
        if source.task == "classification":
            work = max(work, metrics_work(source.d, source.width))
        with full_blas(work):
            metric_set, n_used, dropped, extras = metrics_from_statistics(source, options)
    elif source.task == "classification":
        metric_set, n_used, dropped, extras = classification_from_source(source, options)
    else:
        rows = FiniteRows(source, options)
        metric_set, n_used, dropped, extras = regression_from_source(source, rows, options)
    if source.task == "classification":
        extras.update(add_calibration(metric_set, source, options))  # from the logits, or null
    if dropped:
        metric_set.info["nonfinite_rows_dropped"] = dropped
        metric_set.warn(f"{dropped} row(s) with NaN or Inf features were dropped")
    for note in source.notes:  # what the reader assumed (e.g. integer targets read as labels)
        metric_set.warn(note)
    if left is not None:
        left.record(metric_set)
    result = _result(source, metric_set, n_used, extras)
    if source.task == "classification" and options.per_class > 0:
        result.per_class = class_table(extras, options.per_class, options.global_mean)
    return result


# The largest dense float64 matrix the statistics and metrics may build (4 GiB by default): for
# classification the K x D class sums, means and head (the pair metrics reduce K x K Gram
# matrices in tiles of about 1 MiB, `metrics.pairs`, and the decisions score rows in blocks of
# about 8 MiB, `stats.decisions`) and the D x D scatter when pass 2 can take that route
# (K_eff >= D, so K >= D; else the class span's K_eff x K_eff, smaller than K x D); D x D,
# T x T and T x D for regression. A few kilobytes of compressed head or features can claim K or
# D = 10^5, i.e. matrices of 80 GB; the environment (trusted) may raise the bound for a
# genuinely wide model (4 GiB is K x D = 5.4e8, D up to about 23,000).
MAX_DENSE_ENV = "NCINSPECT_MAX_DENSE_GIB"
_DENSE_DEFAULT_BYTES = 4 << 30


def max_dense_bytes() -> int:
    """The bound on one dense float64 statistic: `NCINSPECT_MAX_DENSE_GIB` GiB, else 4 GiB.
    UsageError for a value that is not a positive number."""
    text = os.environ.get(MAX_DENSE_ENV, "").strip()
    if not text:
        return _DENSE_DEFAULT_BYTES
    try:
        gib = float(text)
    except ValueError:
        gib = math.nan
    if not (math.isfinite(gib) and gib > 0):
        raise UsageError(f"{MAX_DENSE_ENV}={text!r}: expected a positive number of GiB")
    return int(gib * (1 << 30))


def check_dense_size(source: FeatureSource) -> None:
    """Refuse a source whose K, T or D would make the statistics allocate a dense matrix above
    `max_dense_bytes`, before anything is allocated (the sizes are the head's shape, or without
    a head K from the labels or outputs, T from the targets: `FeatureSource.width`). Arrays
    the caller holds in memory (`ncinspect.analyze_arrays`) are its own: not bounded.

    Classification allocates O(K D + D^2) plus fixed-size tiles and score blocks, with the
    D x D scatter only when K >= D, so K x D is its largest matrix: K x K is never formed, and
    K alone is not bounded (the pair metrics' time still grows as K^2 D)."""
    if source.origin == "array":
        return
    rows, d = source.width, source.d
    if source.task == "classification":  # no K x K (tiled); D x D only when K >= D
        shapes = {"K x D": rows * d}
    else:
        shapes = {"D x D": d * d, "T x T": rows * rows, "T x D": rows * d}
    name, elements = max(shapes.items(), key=lambda item: item[1])
    limit = max_dense_bytes()
    if elements * 8 > limit:
        what = "K" if source.task == "classification" else "T"
        shape = "the head is" if source.head is not None else "without a head, the data give"
        raise InputError(
            f"{shape} {what} = {rows} by D = {d}: the statistics need a {name} float64 "
            f"matrix of {elements * 8 / (1 << 30):.3g} GiB, more than the "
            f"{limit / (1 << 30):.3g} GiB allowed (set {MAX_DENSE_ENV} to allow more for a file "
            "you trust)",
            path=source.path,
        )


def _check_finite_head(source: FeatureSource) -> None:
    """A head weight or bias with NaN/Inf makes every head metric meaningless: refuse it."""
    head = source.head
    if head is None:
        return
    for name, arr in (("weight", head.weight), ("bias", head.bias)):
        if arr is None:
            continue
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise InputError(
                f"the head {name} {tuple(int(s) for s in arr.shape)} has {bad} NaN or Inf "
                "value(s); the checkpoint's head diverged (--drop-nonfinite drops feature rows "
                "only)",
                path=source.path,
            )
        largest = float(np.abs(arr).max()) if arr.size else 0.0
        if largest > MAX_FEATURE_ABS:
            raise InputError(
                f"the head {name} has values up to {largest:.3g} in magnitude; expected |w| <= "
                f"{MAX_FEATURE_ABS:.0e} (larger values overflow the float64 products W h)",
                path=source.path,
            )


_INT64 = 2**63


def _epoch_of(source: FeatureSource) -> int | None:
    """The source's `epoch` attribute as an int: a whole number within int64, or InputError."""
    value = source.meta.get("epoch")
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    number: int | None = None
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if number is None or not -_INT64 <= number < _INT64:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise InputError(
            f"attribute 'epoch' is {shown} ({type(value).__name__}); expected a whole number "
            "(the checkpoint's epoch) within the int64 range",
            path=source.path,
        )
    return number


def _headless_layer(ms: MetricSet) -> None:
    """A layer store without a head lacks it by design (only the head's input has it): the
    head keys' reason says so, in info only, with no warning."""
    undefined = ms.info.get("undefined", {})
    for key, reason in list(undefined.items()):
        if reason in (NO_CLASSIFIER, NO_REGRESSOR):
            undefined[key] = NO_LAYER_HEAD
    stale = {f"are undefined: {NO_CLASSIFIER}", f"are undefined: {NO_REGRESSOR}",
             f"is undefined: {NO_CLASSIFIER}", f"is undefined: {NO_REGRESSOR}"}  # fmt: skip
    ms.warnings[:] = [w for w in ms.warnings if not any(w.endswith(end) for end in stale)]


def _result(source: FeatureSource, ms: MetricSet, n_used: int, extras: dict[str, Any]) -> Result:
    meta = source.meta
    extras = {**extras, "meta": dict(meta)}
    layer, layer_order = _layer_of(source)
    if layer is not None and source.head is None:
        _headless_layer(ms)
    return Result(
        source=source.path,
        task=source.task,
        n=n_used,
        d=source.d,
        k=source.k,
        t=source.t,
        metrics=ms.metrics,
        info=ms.info,
        warnings=ms.warnings,
        run=_str_or_none(meta.get("run")),
        checkpoint=_str_or_none(meta.get("checkpoint")),
        epoch=_epoch_of(source),
        split=_str_or_none(meta.get("split")),
        layer=layer,
        layer_order=layer_order,
        extras=extras,
    )


def _layer_of(source: FeatureSource) -> tuple[str | None, int | None]:
    """(layer, layer_order) of a layer store (`extract --layers`), (None, None) for any other
    source: the name a non-empty string and the order a whole number, or InputError."""
    layer, order = source.meta.get("layer"), source.meta.get("layer_order")
    if isinstance(order, np.generic):
        order = order.item()
    if layer is None and order is None:
        return None, None
    if not isinstance(layer, str) or not layer:
        raise InputError(
            f"attribute 'layer' is {layer!r}; expected the module's name (a layer store)",
            path=source.path,
        )
    if order is None:
        return layer, None
    if isinstance(order, float) and order.is_integer():
        order = int(order)
    if isinstance(order, bool) or not isinstance(order, int):
        raise InputError(
            f"attribute 'layer_order' is {order!r}; expected a whole number (the layer's place "
            "in the forward pass)",
            path=source.path,
        )
    return layer, order


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)
