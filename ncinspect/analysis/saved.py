"""Saved sufficient statistics: a source's two passes kept as data, and the metrics from them.

Owns: `gather_statistics` (the analysis's own two passes, `analysis.classification` and
`analysis.regression`'s `*_statistics`, over any source, with an optional step between them that
combines pass 1 over the processes of a distributed extraction) and its records for the store,
`gather_together` (the same for several sources whose rows come from one pass: the layers of
`extract --stats-only --layers`),
and `metrics_from_statistics` (the records of a stats-only store, or of every shard of a set ->
accumulators -> merged -> the same metric functions as for rows), with the checks that turn a
damaged or incomplete `stats` group into one error line naming the file and the record.
Never reads files (the store hands over `StatRecord`s) and never runs a model.

What is saved (axes N, D, K, T): classification, "sums" (`ClassSums`: counts (K,), per-class sums
(K, D); pass 1, global) and "scatter" (`ClassScatter`: pass 2 with the means fixed, this file's
rows); regression, "moments" (`RegressionMoments` without unit rows; pass 1, global) and
"uncentred" / "centred" (`UnitProjections`; pass 2, this file's rows). "global" records are the
same in every shard of a set; "shard" records are plain sums, merged over the shards. So the
metrics equal those of the rows' two passes up to float64 rounding of the sums (the tests check
1e-9 relative). A record written before a field existed (`ADDED_LATER`) still loads; the key that
field feeds is null with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from ncinspect.analysis.classification import (
    ClassPasses,
    classification_statistics,
    global_mean_choice,
    warn_near_chance,
)
from ncinspect.analysis.frequent import keep_frequent, saved_min_count
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.regression import (
    NO_PREDICTIONS,
    RegressionPasses,
    gamma_choice,
    regression_from_statistics,
    regression_statistics,
)
from ncinspect.analysis.rows import FiniteRows, RowFilter
from ncinspect.errors import StoreError
from ncinspect.io.sources import Batch, FeatureSource, SavedStatistics, StatRecord
from ncinspect.metrics.classification import classification_extras, classification_metrics
from ncinspect.metrics.results import MetricSet
from ncinspect.stats.classification import ClassScatter, ClassSums
from ncinspect.stats.parallel import worker_pass
from ncinspect.stats.regression import RegressionMoments, UnitProjections

# Turns one process's pass-1 accumulator (ClassSums or RegressionMoments) into every process's.
Combine = Callable[[Any], Any]

# Fields an accumulator gained after stats-only stores were first written: a record without one
# still loads, marked (`ClassScatter.ncc_counted` False), and the metric it feeds is null with the
# reason (`metrics.classification.NO_NCC_COUNT`), never an error; without the per-class counts
# the per-class tables' recall columns are null.
ADDED_LATER: dict[str, tuple[str, ...]] = {
    "ClassScatter": ("ncc_correct", "class_correct", "class_ncc_correct")
}

# part name -> (class, scope), per task
PARTS: dict[str, dict[str, tuple[type, str]]] = {
    "classification": {"sums": (ClassSums, "global"), "scatter": (ClassScatter, "shard")},
    "regression": {
        "moments": (RegressionMoments, "global"),
        "uncentred": (UnitProjections, "shard"),
        "centred": (UnitProjections, "shard"),
    },
}


def gather_statistics(
    source: FeatureSource, options: AnalysisOptions, combine: Combine | None = None
) -> tuple[dict[str, StatRecord], dict[str, Any]]:
    """Run the two passes over `source` (any `FeatureSource`; extraction passes one whose batches
    run the model) and return (records by part name, attributes for the `stats` group).

    combine: applied to the pass-1 accumulator before pass 2 (distributed extraction: the
    combination over every process, so that pass 2 uses the global means).
    """
    if source.task == "classification":
        sums, scatter, dropped = classification_statistics(source, options, combine)
        return records(source, [sums, scatter], dropped, options)
    gamma_choice(options)
    rows = FiniteRows(source, options)
    moments, uncentred, centred = regression_statistics(source, rows, combine)
    return records(source, [moments, uncentred, centred], rows.dropped)


def gather_together(
    sources: Sequence[FeatureSource],
    passes: Callable[[], Iterator[Sequence[Batch]]],
    options: AnalysisOptions,
    combine: Combine | None = None,
) -> list[tuple[dict[str, StatRecord], dict[str, Any]]]:
    """`gather_statistics` of several sources whose rows come together (the layers of one
    forward pass, `extract --stats-only --layers`): each call of `passes()` runs over the data
    once and yields, per block, one `Batch` per source, in `sources` order. Pass 1 of every
    source shares one such run, pass 2 another; each source's records equal those of
    `gather_statistics` on it alone (the same accumulators, fed the same blocks)."""
    filters = [RowFilter(s, options) for s in sources]
    drivers: list[ClassPasses | RegressionPasses] = []
    for s in sources:
        if s.task == "classification":
            drivers.append(ClassPasses(s, options, combine))
        else:
            gamma_choice(options)
            drivers.append(RegressionPasses(s, combine))
    with worker_pass():
        for step in ("first", "second"):
            for f in filters:
                f.start()
            for group in passes():
                for f, driver, batch in zip(filters, drivers, group, strict=True):
                    kept = f.take(batch)
                    if kept is not None:
                        getattr(driver, step)(kept)
            for f in filters:
                f.end()
            if step == "first":
                for driver in drivers:
                    driver.between()
    return [
        records(s, list(driver.finish()), f.dropped, options)
        for s, driver, f in zip(sources, drivers, filters, strict=True)
    ]


def records(
    source: FeatureSource,
    parts: list[Any],
    dropped: int,
    options: AnalysisOptions | None = None,
) -> tuple[dict[str, StatRecord], dict[str, Any]]:
    """(records by part name, `stats` group attributes) of one source's two passes: `parts` in
    the order of `PARTS[source.task]`, `dropped` non-finite feature rows; `min_count` when
    classification statistics were gathered with `options.min_count` > 1. Shared by the host
    passes and the device ones (`analysis.device`)."""
    scopes = PARTS[source.task]
    attrs: dict[str, Any] = {"nonfinite_rows_dropped": int(dropped)}
    if source.task == "classification" and options is not None and options.min_count > 1:
        attrs["min_count"] = int(options.min_count)
    if source.task == "regression":
        # a layer without a head (and without outputs) predicted nothing: mse and r2 are null
        headless = source.head is None and not source.has_outputs
        attrs["predictions"] = (
            NO_PREDICTIONS if headless else "outputs" if source.has_outputs else "W h + b"
        )
    named = dict(zip(scopes, parts, strict=True))
    return {name: StatRecord.of(obj, scopes[name][1]) for name, obj in named.items()}, attrs


def metrics_from_statistics(
    source: FeatureSource, options: AnalysisOptions
) -> tuple[MetricSet, int, int, dict[str, Any]]:
    """(metrics, rows used, rows dropped as non-finite, extras) from the source's saved
    statistics: the global records from the first file (the store checked that every shard holds
    the same), the shard records merged in shard order."""
    saved = source.statistics
    if not saved:
        raise ValueError("metrics_from_statistics needs a source with saved statistics")
    built = [_objects(s, source) for s in saved]
    merged: dict[str, Any] = dict(built[0])
    for name, (_, scope) in PARTS[source.task].items():
        if scope == "shard":
            for s, other in zip(saved[1:], built[1:], strict=True):
                _check_mergeable(name, merged[name], other[name], s.path, saved[0].path)
                merged[name] = merged[name].merge(other[name])
    dropped = sum(_int(s, "nonfinite_rows_dropped") for s in saved)
    where = saved[0].path if len(saved) == 1 else source.path
    if source.task == "classification":
        sums, scatter = merged["sums"], merged["scatter"]
        min_count = saved_min_count(saved[0].attrs, saved[0].path)
        left = None
        if min_count > 1:  # gathered by extract --min-count: pass 2 read the frequent classes
            sums, left = keep_frequent(sums, min_count)
        _expect_rows(where, "scatter", scatter.n, sums.n)
        moments = sums.moments(scatter.within)
        how = global_mean_choice(options)
        metric_set = classification_metrics(moments, scatter, source.head, global_mean=how)
        if left is not None:
            left.record(metric_set)
        warn_near_chance(metric_set, source.width)
        return metric_set, moments.n, dropped, classification_extras(moments, source.head, scatter)
    moments = merged["moments"]
    for name in ("uncentred", "centred"):
        _expect_rows(where, name, merged[name].n, moments.n)
    predictions = str(saved[0].attrs.get("predictions", "W h + b"))
    metric_set, extras = regression_from_statistics(
        moments, merged["uncentred"], merged["centred"], source.head, predictions, options
    )
    return metric_set, moments.n, dropped, extras


def _check_mergeable(part: str, first: Any, other: Any, path: str, first_path: str) -> None:
    """The shard record `other` (of file `path`) adds to `first` (the first shard's): the same
    route and the same shape of every array (a crafted or foreign shard is one error line)."""
    for f in fields(first):
        a, b = getattr(first, f.name), getattr(other, f.name)
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            same = isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
            found = getattr(b, "shape", b)
            expected = getattr(a, "shape", a)
        elif f.name == "route":
            same, found, expected = a == b, b, a
        else:
            continue
        if not same:
            raise StoreError(
                f"'stats/{part}/{f.name}' is {found!r} but {Path(first_path).name} has "
                f"{expected!r}: the shards cannot be added up (shards of different extractions?); "
                "re-run extract --stats-only",
                path=path,
            )


def _int(saved: SavedStatistics, key: str) -> int:
    value = saved.attrs.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StoreError(
            f"attribute 'stats/{key}' is {value!r}, expected an integer >= 0", path=saved.path
        )
    return value


def _expect_rows(path: str, part: str, found: int, expected: int) -> None:
    if found != expected:
        raise StoreError(
            f"'stats/{part}' covers {found} rows but pass 1 ('stats/sums' or 'stats/moments') "
            f"covers {expected}: the statistics are incomplete (a missing or foreign shard?); "
            "re-run extract --stats-only",
            path=path,
        )


def _objects(saved: SavedStatistics, source: FeatureSource) -> dict[str, Any]:
    """The accumulators of one file, each checked against the head's K or T and D."""
    expected = PARTS[source.task]
    p = saved.path
    missing = sorted(set(expected) - set(saved.parts))
    unexpected = sorted(set(saved.parts) - set(expected))
    if missing or unexpected:
        found = ", ".join(sorted(saved.parts)) or "none"
        raise StoreError(
            f"group 'stats' holds {found}; expected {', '.join(expected)} for a {source.task} "
            f"store (missing: {', '.join(missing) or 'none'}; unexpected: "
            f"{', '.join(unexpected) or 'none'}); re-run extract --stats-only",
            path=p,
        )
    out: dict[str, Any] = {}
    for name, (cls, scope) in expected.items():
        record = saved.parts[name]
        where = f"stats/{name}"
        if record.kind != cls.__name__ or record.scope != scope:
            raise StoreError(
                f"group '{where}' holds a {record.kind} ({record.scope}); expected a "
                f"{cls.__name__} ({scope})",
                path=p,
            )
        names = {f.name for f in fields(cls) if f.init}
        older = [key for key in ADDED_LATER.get(cls.__name__, ()) if key not in record.fields]
        lacking = sorted(names - set(record.fields) - set(older))
        extra = sorted(set(record.fields) - names)
        if lacking or extra:
            raise StoreError(
                f"group '{where}' ({record.kind}) lacks field(s) {', '.join(lacking) or 'none'} "
                f"and has unexpected field(s) {', '.join(extra) or 'none'}; written by another "
                "ncinspect version? re-run extract --stats-only",
                path=p,
            )
        out[name] = cls(**record.fields)
        if isinstance(out[name], ClassScatter) and "ncc_correct" in older:
            out[name].ncc_counted = False
    _check_shapes(out, source, p, saved_min_count(saved.attrs, p))
    return out


def _check_shapes(parts: dict[str, Any], source: FeatureSource, p: str, min_count: int) -> None:
    width, d = source.width, source.d
    checks: list[tuple[str, Any, tuple[int | None, ...]]]
    if source.task == "classification":
        sums, scatter = parts["sums"], parts["scatter"]
        _check_arrays([("sums/counts", sums.counts, (width,))], width, d, p)
        # the class-span route's scatter is r x r for the r = K_eff classes present (the
        # plan's basis; with --min-count, those with that many rows); a larger one is a
        # crafted eigenproblem
        r = d if scatter.route == "dxd" else int(np.count_nonzero(sums.counts >= min_count))
        checks = [
            ("sums/sums", sums.sums, (width, d)),
            ("scatter/scatter", scatter.scatter, (r, r)),
            ("scatter/within", scatter.within, (width,)),
        ]
        for name in ("class_correct", "class_ncc_correct"):  # optional: None is allowed
            counted = getattr(scatter, name)
            if counted is not None:
                _check_arrays([(f"scatter/{name}", counted, (width,))], width, d, p)
                if np.any(counted < 0) or np.any(counted > sums.counts):
                    raise StoreError(
                        f"'stats/scatter/{name}' has counts outside [0, the class's rows in "
                        "'stats/sums/counts']; re-run extract --stats-only",
                        path=p,
                    )
    else:
        m = parts["moments"]
        checks = [
            ("moments/feature_mean", m.feature_mean, (d,)),
            ("moments/feature_scatter", m.feature_scatter, (d, d)),
            ("moments/target_mean", m.target_mean, (width,)),
            ("moments/target_scatter", m.target_scatter, (width, width)),
        ]
        for name in ("uncentred", "centred"):
            u = parts[name]
            checks.append((f"{name}/basis", u.basis, (d, None)))
            k = u.basis.shape[1] if isinstance(u.basis, np.ndarray) and u.basis.ndim == 2 else -1
            checks.append((f"{name}/gram", u.gram, (k, k)))
    _check_arrays(checks, width, d, p)


def _check_arrays(
    checks: list[tuple[str, Any, tuple[int | None, ...]]], width: int, d: int, p: str
) -> None:
    for key, arr, shape in checks:
        ok = (
            isinstance(arr, np.ndarray)
            and arr.ndim == len(shape)
            and all(s is None or s == a for s, a in zip(shape, arr.shape, strict=True))
            and (np.issubdtype(arr.dtype, np.number))
        )
        if not ok:
            found = (
                f"shape {tuple(arr.shape)} dtype {arr.dtype}"
                if isinstance(arr, np.ndarray)
                else type(arr).__name__
            )
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise StoreError(
                f"'stats/{key}' has {found}, expected a numeric array of shape {want} "
                f"(K or T = {width}, D = {d} from 'head/weight')",
                path=p,
            )
