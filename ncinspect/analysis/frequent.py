"""`report --min-count M`: the analysis of a source's rows whose class has at least M of them.

Token frequencies are extremely imbalanced: in a vocabulary most classes have a handful of
samples, and their means (and the metrics built on them) are mostly noise. `FrequentRows` is a
source holding only the rows of the classes with at least M rows, so every pass, metric and
calibration key sees exactly the data with the rarer classes' rows deleted: those classes become
absent classes (K_eff), the head keeps all K rows (accuracy's argmax runs over every output).
`min_count_source` counts the labels (one pass that reads no features), wraps the source and
says what was left out (`MinCount`, recorded in `info` by the caller).

`extract --stats-only --min-count M` applies the same rule while the statistics are gathered:
pass 1 counts every row, the plan and pass 2 keep only the frequent classes' rows
(`keep_frequent`), and the store records M (`stats` attribute `min_count`), which `report`
applies to the saved sums. A stats-only store cannot be filtered afterwards (its sums cover the
rows it kept), so `report --min-count` on one must name the store's own M.
Axes: N samples, B rows of a block, K classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ncinspect.errors import InputError, check_interrupt
from ncinspect.io.sources import Batch, FeatureSource
from ncinspect.metrics.results import MetricSet
from ncinspect.stats.classification import ClassSums


@dataclass(frozen=True)
class MinCount:
    """What `--min-count` left out of one source."""

    min_count: int
    classes: int  # classes with samples, but fewer than min_count
    rows: int  # their rows

    def record(self, out: MetricSet) -> None:
        """info `min_count`, `classes_below_min_count`, `rows_below_min_count`, and a warning
        when anything was left out."""
        out.info["min_count"] = self.min_count
        out.info["classes_below_min_count"] = self.classes
        out.info["rows_below_min_count"] = self.rows
        if self.classes:
            out.warn(
                f"--min-count {self.min_count}: {self.classes} class(es) with fewer samples "
                f"({self.rows} row(s)) were left out; they count as classes without samples"
            )


def keep_frequent(sums: ClassSums, min_count: int) -> tuple[ClassSums, MinCount]:
    """The class sums with the classes of fewer than `min_count` rows zeroed (as if their rows
    had not been read), and what that left out."""
    keep = sums.counts >= min_count
    below = (sums.counts > 0) & ~keep
    left = MinCount(min_count, int(below.sum()), int(sums.counts[below].sum()))
    if not left.classes:
        return sums, left
    kept = ClassSums(
        counts=np.where(keep, sums.counts, 0), sums=np.where(keep[:, None], sums.sums, 0.0)
    )
    return kept, left


def saved_min_count(attrs: dict[str, object], path: str) -> int:
    """The `min_count` a stats-only store's statistics were gathered with (1 when absent);
    StoreError for anything but a whole number >= 1."""
    from ncinspect.errors import StoreError

    value = attrs.get("min_count", 1)
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StoreError(
            f"'stats' attribute 'min_count' is {value!r}; expected a whole number >= 1", path=path
        )
    return value


def class_counts(source: FeatureSource) -> np.ndarray:
    """Rows per class (K,) int64, from the labels alone."""
    counts = np.zeros(source.width, dtype=np.int64)
    for labels in source.label_batches():
        check_interrupt()
        counts += np.bincount(np.asarray(labels, dtype=np.int64), minlength=source.width)
    return counts


class FrequentRows(FeatureSource):
    """The rows of `inner` whose label is in `keep` (K,) bool, in order; otherwise `inner`."""

    def __init__(self, inner: FeatureSource, keep: np.ndarray, n: int) -> None:
        super().__init__(
            path=inner.path,
            task=inner.task,
            n=n,
            d=inner.d,
            head=inner.head,
            has_outputs=inner.has_outputs,
            meta=inner.meta,
            origin=inner.origin,
            width_without_head=inner.width_without_head,
            notes=inner.notes,
        )
        self.inner = inner
        self.keep = keep

    def chunk_rows(self) -> int:
        return self.inner.chunk_rows()

    def saved_class_sums(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The inner source's saved sums with the left-out classes zeroed (still checked
        against the rows read, like any saved sums)."""
        saved = self.inner.saved_class_sums()
        if saved is None or saved[0].shape != self.keep.shape:
            return saved
        counts, sums = saved
        return np.where(self.keep, counts, 0), np.where(self.keep[:, None], sums, 0.0)

    def batches(
        self, rows: int | None = None, *, outputs: bool = True, reuse: bool = False
    ) -> Iterator[Batch]:
        for batch in self.inner.batches(rows, outputs=outputs, reuse=reuse):
            assert batch.labels is not None
            kept = self.keep[batch.labels]
            if kept.all():
                yield batch
                continue
            yield Batch(
                features=batch.features[kept],
                labels=batch.labels[kept],
                outputs=None if batch.outputs is None else batch.outputs[kept],
            )

    def output_batches(self, rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for outputs, labels in self.inner.output_batches(rows):
            kept = self.keep[labels]
            yield np.asarray(outputs)[kept], np.asarray(labels)[kept]

    def label_batches(self, rows: int | None = None) -> Iterator[np.ndarray]:
        for labels in self.inner.label_batches(rows):
            yield labels[self.keep[labels]]

    def close(self) -> None:
        self.inner.close()


def min_count_source(
    source: FeatureSource, min_count: int
) -> tuple[FeatureSource, MinCount | None]:
    """The source restricted to the classes with at least `min_count` rows, and what that left
    out. A stats-only store is returned as it is (None: its own `min_count` is applied with its
    statistics, `analysis.saved`) when gathered with that M, else InputError; InputError also
    when no class has enough rows."""
    if source.statistics is not None:
        saved = saved_min_count(source.statistics[0].attrs, source.statistics[0].path)
        if saved != min_count:
            raise InputError(
                f"--min-count {min_count}: this store holds statistics (extract --stats-only) "
                f"gathered with --min-count {saved}, not rows, so other classes cannot be left "
                f"out afterwards; give --min-count {saved} (or 1), or extract again with "
                f"--min-count {min_count}",
                path=source.path,
            )
        return source, None
    counts = class_counts(source)
    keep = counts >= min_count
    below = (counts > 0) & ~keep
    kept_rows = int(counts[keep].sum())
    if kept_rows == 0:
        raise InputError(
            f"--min-count {min_count} leaves no rows: the most frequent class has "
            f"{int(counts.max(initial=0))}",
            path=source.path,
        )
    left = MinCount(min_count, int(below.sum()), int(counts[below].sum()))
    if not left.classes:
        return source, left
    return FrequentRows(source, keep, kept_rows), left
