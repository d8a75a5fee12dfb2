"""From an opened source to a `Result`: the passes over the data and the metric families.

Owns: the order of passes (pass 1 moments, pass 2 with pass-1 quantities fixed), non-finite row
handling, and assembling the result record. Reads data only through `FeatureSource.batches`;
computes nothing itself beyond masking rows (the math lives in `stats`, `collapse`, `regression`).
Memory is independent of N: one read block (about 8 MiB of features) and the statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ncinspect.errors import InputError, check_interrupt
from ncinspect.io.sources import Batch, FeatureSource
from ncinspect.metrics.classification import classification_extras, classification_metrics
from ncinspect.metrics.results import MetricSet, Result
from ncinspect.stats.accumulators import (
    ClassMoments,
    ClassScatter,
    ClassSums,
    ScatterPlan,
    plan_scatter,
)
from ncinspect.stats.parallel import full_blas, map_parts, merged, release_scratch, worker_pass


@dataclass(frozen=True)
class AnalysisOptions:
    """How to analyse one source. `chunk_rows` None means the source's preferred read size."""

    chunk_rows: int | None = None
    drop_nonfinite: bool = False
    nc1_route: str = "auto"  # "auto" | "class_span" | "dxd"
    saved_sums: bool = True  # use class sums saved with the features (checked) instead of pass 1
    gamma: float | None = None  # regression: fixed NRC3 gamma (report --gamma)
    ufm_lambdas: tuple[float, float] | None = None  # regression: gamma = lambda_H * lambda_W


class _Rows:
    """Iterates a source's batches, masking or refusing non-finite feature rows.

    Once a complete pass has found every row finite, later passes skip the check (the source
    does not change between passes). outputs=False: batches without the stored outputs. A batch
    is valid until the next is requested (the source may reuse its buffer): consumers must not
    keep it.
    """

    def __init__(
        self, source: FeatureSource, options: AnalysisOptions, outputs: bool = True
    ) -> None:
        self.source = source
        self.options = options
        self.outputs = outputs
        self.dropped = 0
        self._all_finite = False

    def __iter__(self) -> Iterator[Batch]:
        self.dropped = 0
        check = not self._all_finite
        batches = self.source.batches(self.options.chunk_rows, outputs=self.outputs, reuse=True)
        for batch in batches:
            check_interrupt()  # a Ctrl-C / SIGTERM that Python dropped stops at the next block
            x = batch.features
            if not check:
                yield batch
                continue
            finite = _finite_rows(x)
            if finite.all():
                yield batch
                continue
            bad = int((~finite).sum())
            if not self.options.drop_nonfinite:
                # the count over every row, from the rest of this pass: no second pass (for
                # `extract --stats-only` a pass is a forward pass over the data)
                rest = sum(int((~_finite_rows(b.features)).sum()) for b in batches)
                raise nonfinite_error(bad + rest, self.source)
            self.dropped += bad
            yield Batch(
                features=x[finite],
                labels=None if batch.labels is None else batch.labels[finite],
                targets=None if batch.targets is None else batch.targets[finite],
                outputs=None if batch.outputs is None else batch.outputs[finite],
            )
        if check and self.dropped == 0:
            self._all_finite = True


def nonfinite_error(count: int, source: FeatureSource) -> InputError:
    """The refusal of `count` feature rows with NaN or Inf (without --drop-nonfinite)."""
    return InputError(
        f"'features' has {count} row(s) with NaN or Inf; pass --drop-nonfinite to compute the "
        "metrics from the finite rows only",
        path=source.path,
    )


def plan_pass2(
    sums: ClassSums,
    source: FeatureSource,
    options: AnalysisOptions,
    combine: Callable[[ClassSums], ClassSums] | None = None,
    check: np.ndarray | None = None,
) -> tuple[ClassSums, ScatterPlan]:
    """Between the passes: pass 1 combined over the processes (when `combine` is given), checked
    non-empty, and pass 2's plan (the NC1 route, the means, the head; `check` as in
    `plan_scatter`). The host passes and the device ones (`devicestats`) share it."""
    if combine is not None:
        sums = combine(sums)
    if sums.n == 0:
        raise InputError("no finite feature rows left to analyse", path=source.path)
    head = source.head
    plan = plan_scatter(sums.moments(), head.weight, head.bias_or_zeros(), options.nc1_route, check)
    return sums, plan


STALE_SUMS = (
    "the class sums saved with the features do not match them (the store was changed after it "
    "was written?); computed from the features instead"
)


def _check_direction(d: int) -> np.ndarray:
    """A fixed unit vector in general position (seeded: results stay bit-reproducible)."""
    v = np.random.default_rng(0x5EED).standard_normal(d)
    return v / np.linalg.norm(v)


def _saved_pass1(source: FeatureSource) -> ClassSums | None:
    """The class sums a store saved when it was written, if they fit it: shapes (K,), (K, D),
    counts adding up to N, every sum finite (a store with NaN/Inf rows takes both passes, which
    refuse or drop them). None otherwise."""
    saved = source.saved_class_sums()
    if saved is None:
        return None
    counts, sums = saved
    k = source.head.width
    if counts.shape != (k,) or sums.shape != (k, source.d) or int(counts.sum()) != source.n:
        return None
    if np.any(counts < 0) or not np.isfinite(sums).all():
        return None
    return ClassSums(counts=counts.astype(np.int64), sums=sums.astype(np.float64))


def _unchecked_rows(plan: ScatterPlan, x: np.ndarray, y: np.ndarray) -> ClassScatter:
    """`ClassScatter.from_batch` on rows not checked for NaN/Inf (such rows fail the means
    check, and the result is discarded): quietly, in the worker thread running it."""
    with np.errstate(all="ignore"):
        return ClassScatter.from_batch(plan, x, y)


def _one_pass(
    source: FeatureSource, options: AnalysisOptions, sums: ClassSums
) -> ClassScatter | None:
    """Pass 2 alone, on saved class sums; None when the rows read do not have those sums
    (`ClassScatter.means_match`; NaN/Inf rows fail it too, so no separate finite check)."""
    k = source.head.width
    with worker_pass():
        with full_blas(float(source.d) * k * k):
            sums, plan = plan_pass2(sums, source, options, check=_check_direction(source.d))
        scatter = ClassScatter.empty(plan)
        batches = source.batches(options.chunk_rows, outputs=False, reuse=True)
        for batch in batches:
            check_interrupt()
            x, y = batch.features, batch.labels
            assert y is not None
            if x.shape[0]:
                scattered = map_parts(lambda xs, ys: _unchecked_rows(plan, xs, ys), x, y)
                scatter = scatter.merge(merged(scattered, ClassScatter.merge))
    assert scatter.counts is not None
    if not np.array_equal(scatter.counts, sums.counts) or not scatter.means_match(plan.means):
        return None
    return scatter


def _finite_rows(x: np.ndarray) -> np.ndarray:
    """(B,) bool: the rows of x (B, D) without NaN or Inf.

    A row's sum, one matrix-vector product, is finite whenever its entries are (NaN and Inf
    propagate through every addition); only rows whose sum is not finite (a NaN or Inf, or a
    sum of large finite entries that overflows) are checked entry by entry. Four times cheaper
    than testing every entry (measured at 4,096 x 512 float32).
    """
    if x.dtype not in (np.float32, np.float64):
        return np.isfinite(x).all(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(x @ np.ones(x.shape[1], dtype=x.dtype))
    if not finite.all():
        suspect = np.flatnonzero(~finite)
        finite[suspect] = np.isfinite(x[suspect]).all(axis=1)
    return finite


@dataclass(frozen=True)
class ClassStats:
    """What the classification metrics need of a source's rows, and how it was obtained."""

    moments: ClassMoments
    scatter: ClassScatter
    dropped: int  # rows dropped as non-finite
    sums_from: str  # "saved" (the store's class sums, checked) or "computed" (pass 1)
    stale: bool  # saved class sums were found not to match the rows, and were recomputed


def classification_stats(source: FeatureSource, options: AnalysisOptions) -> ClassStats:
    """Two passes over the source, or one when the store saved its class sums.

    Pass 1 gathers counts and per-class sums (`ClassSums`); pass 2, with the means fixed, the
    scatter, accuracy, NC4 and the within-class squared deviations that complete `ClassMoments`
    (the two-pass form of m2, exact up to float64 rounding). A store written by ncinspect saves
    the class sums of the rows it holds (`StoreWriter`): pass 2 then runs on those, and checks
    they are the rows' own (`_one_pass`); if not, both passes run and `stale` says so.
    """
    saved = _saved_pass1(source) if options.saved_sums else None
    if saved is not None:
        scatter1 = _one_pass(source, options, saved)
        if scatter1 is not None:
            return ClassStats(saved.moments(scatter1.within), scatter1, 0, "saved", False)
    sums, scatter, dropped = classification_statistics(source, options)
    return ClassStats(sums.moments(scatter.within), scatter, dropped, "computed", saved is not None)


def finite_rows(source: FeatureSource, options: AnalysisOptions, outputs: bool = True) -> _Rows:
    """The source's batches as the passes read them (non-finite rows refused or dropped)."""
    return _Rows(source, options, outputs=outputs)


def classification_statistics(
    source: FeatureSource,
    options: AnalysisOptions,
    combine: Callable[[ClassSums], ClassSums] | None = None,
) -> tuple[ClassSums, ClassScatter, int]:
    """The two passes of `classification_stats`: (pass-1 sums, pass-2 scatter, rows dropped).

    `combine`, when given, turns this pass-1 result into the one over every row of a distributed
    extraction (each process sees its shard) before pass 2 uses the means.
    """
    rows = _Rows(source, options, outputs=False)  # the metrics use W h + b, not stored logits
    k = source.head.width
    sums = ClassSums.empty(k, source.d)
    # one worker pass over both passes and the plan between them: a small plan's BLAS calls on
    # one thread, so no BLAS thread is left spinning when pass 2's workers start (a large plan
    # gets the BLAS threads back: `full_blas`)
    with worker_pass():
        for batch in rows:
            x, y = batch.features, batch.labels
            assert y is not None
            if x.shape[0]:
                parts = map_parts(lambda xs, ys: ClassSums.from_batch(xs, ys, k), x, y)
                sums = sums.merge(merged(parts, ClassSums.merge))
        # the plan's largest product: W's least squares on the K_eff means, D K^2
        with full_blas(float(source.d) * k * k):
            sums, plan = plan_pass2(sums, source, options, combine)
        scatter = ClassScatter.empty(plan)
        for batch in rows:
            x, y = batch.features, batch.labels
            assert y is not None
            if x.shape[0]:
                scattered = map_parts(lambda xs, ys: ClassScatter.from_batch(plan, xs, ys), x, y)
                scatter = scatter.merge(merged(scattered, ClassScatter.merge))
    return sums, scatter, rows.dropped


def analyze_source(source: FeatureSource, options: AnalysisOptions | None = None) -> Result:
    """Compute every metric of the source's task and return one result record."""
    try:
        # numpy's BLAS on one thread for the whole analysis, metrics included (large steps get
        # its threads back: `full_blas`): multi-threaded BLAS calls after the passes left a BLAS
        # thread spinning into the next analysis's first pass (measured back to back: -7 % at
        # K = 100, -9 % at K = 1,000)
        with worker_pass():
            return _analyze_source(source, options or AnalysisOptions())
    finally:
        release_scratch()  # the passes' per-thread temporaries


def _analyze_source(source: FeatureSource, options: AnalysisOptions) -> Result:
    _check_finite_head(source)
    extras: dict[str, Any] = {}
    if source.statistics is not None:  # saved by extract --stats-only: no rows to read
        from ncinspect.analysis.saved import metrics_from_statistics

        with full_blas(float(source.d) ** 3):  # up to a D x D eigendecomposition
            metric_set, n_used, dropped, extras = metrics_from_statistics(source, options)
    elif source.task == "classification":
        stats = classification_stats(source, options)
        moments, dropped = stats.moments, stats.dropped
        with full_blas(float(min(source.d, source.head.width)) ** 3):  # Sigma_B's eigenpairs
            metric_set = classification_metrics(moments, stats.scatter, source.head)
        metric_set.info["class_sums"] = stats.sums_from
        if stats.stale:
            metric_set.warn(STALE_SUMS)
        n_used = moments.n
        extras = classification_extras(moments, source.head)
    else:
        metric_set, n_used, dropped, extras = _regression(source, options)
    if dropped:
        metric_set.info["nonfinite_rows_dropped"] = dropped
        metric_set.warn(f"{dropped} row(s) with NaN or Inf features were dropped")
    return _result(source, metric_set, n_used, extras)


def _check_finite_head(source: FeatureSource) -> None:
    """A head weight or bias with NaN/Inf makes every head metric meaningless: refuse it."""
    head = source.head
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


def _regression(
    source: FeatureSource, options: AnalysisOptions
) -> tuple[MetricSet, int, int, dict[str, Any]]:
    from ncinspect.metrics.regression import regression_from_source

    return regression_from_source(source, _Rows(source, options), options)


def _result(source: FeatureSource, ms: MetricSet, n_used: int, extras: dict[str, Any]) -> Result:
    meta = source.meta
    extras = {**extras, "meta": dict(meta)}
    epoch = meta.get("epoch")
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
        epoch=None if epoch is None else int(epoch),
        split=_str_or_none(meta.get("split")),
        extras=extras,
    )


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)
