"""A classification source -> its statistics -> the NC1-NC4 metrics: the passes and the plan.

Owns: the two passes over a source's rows (`classification_statistics`: pass 1 `ClassSums`,
then, with the means fixed by `plan_class_scatter`, pass 2 `ClassScatter`), the one-pass route
on class sums a store saved (checked against the rows, `STALE_SUMS` when they do not match), and
`classification_from_source`, which turns either into the metrics of `metrics.classification`,
the global-mean choice (`global_mean_choice`: the sample mean or the mean of the class means)
and the near-chance warning (`warn_near_chance`). A source without a head gets the head-free
metrics, and its accuracy from the stored logits when it has them.
The worker threads and the BLAS thread count of every pass are `stats.parallel`'s.
Reads rows only through `FeatureSource.batches`; the arithmetic lives in `stats` and `metrics`.
Axes: N samples, D feature dim, K classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ncinspect.analysis.frequent import keep_frequent
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.rows import FiniteRows
from ncinspect.errors import InputError, UsageError, check_interrupt
from ncinspect.io.sources import Batch, FeatureSource
from ncinspect.metrics.classification import classification_extras, classification_metrics
from ncinspect.metrics.results import MetricSet
from ncinspect.stats.classification import (
    GLOBAL_MEANS,
    ClassMoments,
    ClassScatter,
    ClassSums,
    ScatterPlan,
    plan_scatter,
)
from ncinspect.stats.parallel import full_blas, map_parts, merged, worker_pass

STALE_SUMS = (
    "the class sums saved with the features do not match them (the store was changed after it "
    "was written?); computed from the features instead"
)


def global_mean_choice(options: AnalysisOptions) -> str:
    """How mu_G is formed ("weighted" or "unweighted"); UsageError for anything else."""
    if options.global_mean not in GLOBAL_MEANS:
        raise UsageError(
            f"--global-mean: found {options.global_mean!r}; expected one of "
            f"{', '.join(GLOBAL_MEANS)}"
        )
    return options.global_mean


def plan_class_scatter(
    sums: ClassSums,
    source: FeatureSource,
    options: AnalysisOptions,
    combine: Callable[[ClassSums], ClassSums] | None = None,
    check: np.ndarray | None = None,
) -> tuple[ClassSums, ScatterPlan]:
    """Between the passes: pass 1 combined over the processes (when `combine` is given), checked
    non-empty, and pass 2's plan (the NC1 route, the means, the head, the global mean of
    `options`; `check` as in `plan_scatter`). With `options.min_count` > 1 the plan has only the
    classes with that many rows (`analysis.frequent.keep_frequent`; pass 2 then reads only their
    rows: `plan.present`), while the sums returned keep every class (a stats-only store saves
    them, and the count of what was left out). The host passes and the device ones
    (`analysis.device`) share it."""
    how = global_mean_choice(options)
    if combine is not None:
        sums = combine(sums)
    if sums.n == 0:
        raise InputError("no finite feature rows left to analyse", path=source.path)
    planned = sums
    if options.min_count > 1:  # the frequent classes' means: pass 2 reads only their rows
        planned, _ = keep_frequent(sums, options.min_count)
        if planned.n == 0:
            raise InputError(
                f"--min-count {options.min_count} leaves no rows: the most frequent class has "
                f"{int(sums.counts.max(initial=0))}",
                path=source.path,
            )
    head = source.head
    weight, bias = (None, None) if head is None else (head.weight, head.bias_or_zeros())
    plan = plan_scatter(planned.moments(), weight, bias, options.nc1_route, check, how)
    return sums, plan


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
    k = source.width
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
    k = source.width
    with worker_pass():
        with full_blas(float(source.d) * k * k):
            sums, plan = plan_class_scatter(sums, source, options, check=_check_direction(source.d))
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


@dataclass(frozen=True)
class _SourceStatistics:
    """What the classification metrics need of a source's rows, and how it was obtained."""

    moments: ClassMoments
    scatter: ClassScatter
    dropped: int  # rows dropped as non-finite
    sums_from: str  # "saved" (the store's class sums, checked) or "computed" (pass 1)
    stale: bool  # saved class sums were found not to match the rows, and were recomputed


def _source_statistics(source: FeatureSource, options: AnalysisOptions) -> _SourceStatistics:
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
            return _SourceStatistics(saved.moments(scatter1.within), scatter1, 0, "saved", False)
    sums, scatter, dropped = classification_statistics(source, options)
    moments = sums.moments(scatter.within)
    return _SourceStatistics(moments, scatter, dropped, "computed", saved is not None)


def classification_statistics(
    source: FeatureSource,
    options: AnalysisOptions,
    combine: Callable[[ClassSums], ClassSums] | None = None,
) -> tuple[ClassSums, ClassScatter, int]:
    """The two passes over the source's rows: (pass-1 sums, pass-2 scatter, rows dropped).

    `combine`, when given, turns this pass-1 result into the one over every row of a distributed
    extraction (each process sees its shard) before pass 2 uses the means.
    The metrics use W h + b, not stored logits; a source without a head but with logits has its
    scatter's `correct` count rows whose logits' argmax is the label (`outputs_correct`).
    """
    from_logits = source.head is None and source.has_outputs
    rows = FiniteRows(source, options, outputs=from_logits)
    passes = ClassPasses(source, options, combine)
    # one worker pass over both passes and the plan between them: a small plan's BLAS calls on
    # one thread, so no BLAS thread is left spinning when pass 2's workers start (a large plan
    # gets the BLAS threads back: `full_blas`)
    with worker_pass():
        for batch in rows:
            passes.first(batch)
        passes.between()
        for batch in rows:
            passes.second(batch)
    sums, scatter = passes.finish()
    return sums, scatter, rows.dropped


class ClassPasses:
    """The two passes of `classification_statistics`, fed one batch of finite rows at a time by
    whoever drives them (one source's rows, or several sources' from one forward pass:
    `analysis.saved.gather_together`): `first` per batch of pass 1, `between` (the plan), `second`
    per batch of pass 2, `finish` -> (pass-1 sums, pass-2 scatter). The caller holds the worker
    pass (`stats.parallel.worker_pass`)."""

    def __init__(
        self,
        source: FeatureSource,
        options: AnalysisOptions,
        combine: Callable[[ClassSums], ClassSums] | None = None,
    ) -> None:
        self.source = source
        self.options = options
        self.combine = combine
        self.k = source.width
        self.from_logits = source.head is None and source.has_outputs
        self.sums = ClassSums.empty(self.k, source.d)
        self.correct = 0
        self.plan: ScatterPlan | None = None
        self.scatter: ClassScatter | None = None

    def first(self, batch: Batch) -> None:
        x, y = batch.features, batch.labels
        assert y is not None
        if not x.shape[0]:
            return
        k = self.k
        parts = map_parts(lambda xs, ys: ClassSums.from_batch(xs, ys, k), x, y)
        self.sums = self.sums.merge(merged(parts, ClassSums.merge))
        if self.from_logits:
            self.correct += outputs_correct(batch.outputs, y)

    def between(self) -> None:
        # the plan's largest product, bounded above by D K^2: W's least squares on the K_eff < D
        # means and the (K_eff, K) logit table, D K K_eff (memory O(K D), never K x K)
        with full_blas(float(self.source.d) * self.k * self.k):
            self.sums, self.plan = plan_class_scatter(
                self.sums, self.source, self.options, self.combine
            )
        self.scatter = ClassScatter.empty(self.plan)

    def second(self, batch: Batch) -> None:
        x, y = batch.features, batch.labels
        assert y is not None and self.plan is not None and self.scatter is not None
        if self.options.min_count > 1:  # the rows of the classes the plan kept
            kept = self.plan.present[y]
            if not kept.all():
                x, y = x[kept], y[kept]
        if not x.shape[0]:
            return
        plan = self.plan
        scattered = map_parts(lambda xs, ys: ClassScatter.from_batch(plan, xs, ys), x, y)
        self.scatter = self.scatter.merge(merged(scattered, ClassScatter.merge))

    def finish(self) -> tuple[ClassSums, ClassScatter]:
        assert self.scatter is not None
        if self.from_logits:
            # in place: `replace` would drop the non-init centre_distance
            self.scatter.correct = self.correct
        return self.sums, self.scatter


def metrics_work(d: int, k: int) -> float:
    """Multiply-adds of the classification metrics after the passes, for `full_blas`: Sigma_B's
    eigenpairs (min(D, K)^3) and the pair sweeps over the tiles of Mc Mc^T and W W^T (K^2 D)."""
    return max(float(min(d, k)) ** 3, float(k) * k * d)


def outputs_correct(outputs: np.ndarray | None, labels: np.ndarray) -> int:
    """Rows whose stored logits (B, K) have their argmax at the label; a row with a NaN or Inf
    logit counts as wrong."""
    assert outputs is not None
    logits = np.asarray(outputs)
    right = np.argmax(logits, axis=1) == labels
    return int(np.count_nonzero(right & np.isfinite(logits).all(axis=1)))


def near_chance_threshold(k: int) -> float:
    """The accuracy below which a K-class result is near chance: 1/K + min(2/K, (1 - 1/K)/2)
    (0.30 for K = 10, 0.75 for K = 2; the margin never reaches past halfway to 1)."""
    chance = 1.0 / k
    return chance + min(2.0 / k, (1.0 - chance) / 2.0)


def warn_near_chance(metric_set: MetricSet, k: int) -> None:
    """Warn when the accuracy is defined and below `near_chance_threshold`: the usual causes are
    the input preprocessing, a wrong head, a wrong split or shuffled labels."""
    accuracy = metric_set.metrics.get("accuracy", math.nan)
    threshold = near_chance_threshold(k)
    if not (math.isfinite(accuracy) and accuracy < threshold):
        return
    metric_set.warn(
        f"accuracy {accuracy:.3f} is near chance (1/K = {1.0 / k:.3f} for K = {k}; warned below "
        f"{threshold:.3f}): check the input preprocessing (--normalize), the head, the split "
        "and whether the labels are shuffled"
    )


def classification_from_source(
    source: FeatureSource, options: AnalysisOptions
) -> tuple[MetricSet, int, int, dict[str, Any]]:
    """The passes, then the metrics: (metrics, rows used N, rows dropped as non-finite, extras
    for later stages (`classification_extras`)). info "class_sums" says whether pass 1 came from
    the store's saved sums or from the rows; info "global_mean" which mu_G the metrics used."""
    how = global_mean_choice(options)
    stats = _source_statistics(source, options)
    moments, dropped = stats.moments, stats.dropped
    from_logits = source.head is None and source.has_outputs
    with full_blas(metrics_work(source.d, source.width)):
        correct = stats.scatter.correct if from_logits else None
        metric_set = classification_metrics(moments, stats.scatter, source.head, correct, how)
    metric_set.info["class_sums"] = stats.sums_from
    if stats.stale:
        metric_set.warn(STALE_SUMS)
    warn_near_chance(metric_set, source.width)
    return (
        metric_set,
        moments.n,
        dropped,
        classification_extras(moments, source.head, stats.scatter),
    )
