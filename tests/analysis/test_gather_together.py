"""`gather_together`: the statistics of several sources fed by one pass (the layers of
`extract --stats-only --layers`) are, record by record, those of `gather_statistics` on each
source alone; non-finite rows are dropped per source or refused with the whole pass's count."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields

import numpy as np
import pytest

from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.saved import gather_statistics, gather_together
from ncinspect.errors import InputError
from ncinspect.io.sources import ArraySource, Batch
from ncinspect.metrics.head import Head

N, K, T, BLOCK = 53, 4, 2, 8
rng = np.random.default_rng(7)
Y = np.arange(N) % K
TARGETS = rng.standard_normal((N, T))


def source(d: int, task: str, head: bool, nan_rows: tuple[int, ...] = ()) -> ArraySource:
    x = rng.standard_normal((N, d)) + (Y[:, None] if task == "classification" else 0.0)
    x[list(nan_rows), 0] = np.nan
    width = K if task == "classification" else T
    return ArraySource(
        path=f"<{task} d={d}>",
        task=task,  # type: ignore[arg-type]
        n=N,
        d=d,
        head=Head(rng.standard_normal((width, d)), rng.standard_normal(width)) if head else None,
        has_outputs=False,
        width_without_head=None if head else width,
        features=x,
        labels=Y if task == "classification" else None,
        targets=TARGETS if task == "regression" else None,
    )


def blocks(sources: list[ArraySource]) -> Iterator[list[Batch]]:
    """One pass: for each block of rows, every source's rows of that block."""
    for start in range(0, N, BLOCK):
        yield [s._read(start, min(N, start + BLOCK)) for s in sources]


def same(a: object, b: object) -> None:
    if isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    else:
        assert a == b


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_each_source_gets_the_records_it_would_get_alone(task: str) -> None:
    sources = [source(6, task, False), source(9, task, False), source(5, task, True)]
    options = AnalysisOptions(chunk_rows=BLOCK)
    together = gather_together(sources, lambda: blocks(sources), options)
    for src, (records, attrs) in zip(sources, together, strict=True):
        alone, alone_attrs = gather_statistics(src, options)
        assert attrs == alone_attrs and records.keys() == alone.keys()
        for name, record in records.items():
            for key, value in record.fields.items():
                same(value, alone[name].fields[key])


def test_nonfinite_rows_are_dropped_per_source_or_refused_with_the_pass_count() -> None:
    sources = [source(6, "classification", False, (3, 20, 41)), source(4, "classification", True)]
    dropping = AnalysisOptions(chunk_rows=BLOCK, drop_nonfinite=True)
    (first, first_attrs), (second, second_attrs) = gather_together(
        sources, lambda: blocks(sources), dropping
    )
    assert (
        first_attrs["nonfinite_rows_dropped"] == 3 and second_attrs["nonfinite_rows_dropped"] == 0
    )
    assert int(first["sums"].fields["counts"].sum()) == N - 3
    assert int(second["sums"].fields["counts"].sum()) == N
    with pytest.raises(InputError, match=r"'features' has 3 row\(s\) with NaN or Inf"):
        gather_together(sources, lambda: blocks(sources), AnalysisOptions(chunk_rows=BLOCK))


def test_records_fields_cover_every_accumulator_field() -> None:
    """The comparison above reads `fields`: it must hold every init field of the classes."""
    sources = [source(6, "classification", True)]
    ((records, _),) = gather_together(sources, lambda: blocks(sources), AnalysisOptions())
    from ncinspect.stats.classification import ClassScatter

    names = {f.name for f in fields(ClassScatter) if f.init}
    assert names <= set(records["scatter"].fields)
