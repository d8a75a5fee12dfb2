"""Reading rows (`analysis.rows`): the finite-row check done once per block, non-finite rows
counted in the pass that finds them, or dropped alike in both passes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ncinspect.analysis.arrays import analyze_arrays
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.passes import analyze_source
from ncinspect.errors import InputError
from ncinspect.io.sources import ArraySource
from ncinspect.metrics.head import Head


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_nonfinite_rows_are_counted_in_the_pass_that_finds_them(task: str) -> None:
    """Without --drop-nonfinite the refusal counts every bad row (here in the first, a middle
    and the last block) from the rest of the same pass: the rows are read once, not again (for
    `extract --stats-only` a second pass would be a second forward pass)."""
    rng = np.random.default_rng(4)
    n, d = 250, 5
    x = rng.standard_normal((n, d)) + 1
    x[[1, 2], 0] = np.nan
    x[[120, 249], 3] = -np.inf
    kw: dict = {"labels": rng.integers(0, 3, n)}
    if task == "regression":
        kw = {"targets": rng.standard_normal((n, 2))}
    source = ArraySource(
        path="counted.h5",
        task=task,
        n=n,
        d=d,
        head=Head(rng.standard_normal((3 if task == "classification" else 2, d)), None),
        has_outputs=False,
        features=x,
        **kw,
    )
    reads: list[int] = []
    real = source._read

    def counted(start: int, stop: int, *args: Any) -> Any:
        reads.append(start)
        return real(start, stop, *args)

    source._read = counted  # type: ignore[method-assign]
    with pytest.raises(InputError, match=r"'features' has 4 row\(s\) with NaN or Inf"):
        analyze_source(source, AnalysisOptions(chunk_rows=40))
    assert reads == list(range(0, n, 40))  # every block once


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_dropping_nonfinite_rows_drops_the_same_rows_in_both_passes(task: str) -> None:
    rng = np.random.default_rng(9)
    n, d = 300, 6
    x = rng.standard_normal((n, d)) + 2
    bad = np.array([3, 50, 51, 299])
    x[bad[:2], 1] = np.nan
    x[bad[2:], 0] = np.inf
    keep = np.setdiff1d(np.arange(n), bad)
    w = rng.standard_normal((3, d))
    if task == "classification":
        y = rng.integers(0, 3, n)
        kw: dict = {"labels": y}
        kw_keep: dict = {"labels": y[keep]}
    else:
        t = rng.standard_normal((n, 3))
        kw = {"targets": t}
        kw_keep = {"targets": t[keep]}
    opts = AnalysisOptions(chunk_rows=41, drop_nonfinite=True)
    got = analyze_arrays(x, w, None, options=opts, **kw)
    want = analyze_arrays(x[keep], w, None, options=AnalysisOptions(chunk_rows=41), **kw_keep)
    assert got.info["nonfinite_rows_dropped"] == 4 and got.n == n - 4
    for key, value in want.metrics.items():
        assert got.metrics[key] == pytest.approx(value, rel=1e-10, abs=1e-13, nan_ok=True), key


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_finite_rows_equal_the_entrywise_test(dtype: type) -> None:
    from ncinspect.analysis.rows import finite_row_mask

    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 33)).astype(dtype)
    big = np.finfo(dtype).max
    x[1, 3] = np.nan
    x[2, 0] = np.inf
    x[3, 5] = -np.inf
    x[4, [1, 2]] = [np.inf, -np.inf]  # the row sum is NaN
    x[5, :] = big  # finite entries whose sum overflows: still a finite row
    x[6, [0, 1]] = [big, -big]
    x[7, -1] = np.nan
    x[7, 0] = np.inf
    np.testing.assert_array_equal(finite_row_mask(x), np.isfinite(x).all(axis=1))
    assert finite_row_mask(x)[5] and not finite_row_mask(x)[1:5].any()
