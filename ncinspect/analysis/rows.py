"""How the passes read a source's rows: non-finite feature rows refused or dropped.

Owns `FiniteRows` (a source's batches with NaN/Inf feature rows refused, or dropped and counted
under `drop_nonfinite`), `finite_row_mask` (the per-block test) and `nonfinite_error` (the one
refusal message, shared by the device passes). Reads data only through `FeatureSource.batches`;
computes no statistic. Axes: N samples, B rows of a block, D feature dim.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ncinspect.analysis.options import AnalysisOptions
from ncinspect.errors import InputError, check_interrupt
from ncinspect.io.sources import Batch, FeatureSource


class FiniteRows:
    """Iterates a source's batches, masking or refusing non-finite feature rows.

    Once a complete pass has found every row finite, later passes skip the check (the source
    does not change between passes). outputs=False: batches without the stored outputs. A batch
    is valid until the next is requested (the source may reuse its buffer): consumers must not
    keep it. After a pass, `dropped` counts the rows it left out.
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
            finite = finite_row_mask(x)
            if finite.all():
                yield batch
                continue
            bad = int((~finite).sum())
            if not self.options.drop_nonfinite:
                # the count over every row, from the rest of this pass: no second pass (for
                # `extract --stats-only` a pass is a forward pass over the data)
                rest = sum(int((~finite_row_mask(b.features)).sum()) for b in batches)
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


def finite_row_mask(x: np.ndarray) -> np.ndarray:
    """(B,) bool: the rows of x (B, D) without NaN or Inf.

    A row's sum, one matrix-vector product, is finite whenever its entries are (NaN and Inf
    propagate through every addition); only rows whose sum is not finite (a NaN or Inf, or a
    sum of large finite entries that overflows) are checked entry by entry, which makes the
    test several times cheaper than testing every entry.
    """
    if x.dtype not in (np.float32, np.float64):
        return np.isfinite(x).all(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(x @ np.ones(x.shape[1], dtype=x.dtype))
    if not finite.all():
        suspect = np.flatnonzero(~finite)
        finite[suspect] = np.isfinite(x[suspect]).all(axis=1)
    return finite
