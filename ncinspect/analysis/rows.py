"""How the passes read a source's rows: non-finite feature rows refused or dropped.

Owns `FiniteRows` (a source's batches with NaN/Inf feature rows refused, or dropped and counted
under `drop_nonfinite`; features too large for float64 sums of squares always refused),
`RowFilter` (the same for passes driven batch by batch), `finite_row_mask` (the per-block
test), `nonfinite_error` and `magnitude_error` (the refusal messages, shared by the device
passes). Reads data only through `FeatureSource.batches`; computes no statistic. Axes: N
samples, B rows of a block, D feature dim.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ncinspect.analysis.options import AnalysisOptions
from ncinspect.errors import InputError, check_interrupt
from ncinspect.io.sources import Batch, FeatureSource

# The largest feature magnitude the statistics accept. Scatter matrices sum N products of two
# features and the metrics multiply such sums again (Gram matrices, pseudo-inverses), so a value
# v must keep N^2 v^4 far below the float64 maximum (1.8e308): with 1e50, N up to 1e50 rows.
# float32 features (at most 3.4e38) always pass: only float64 ones are checked.
MAX_FEATURE_ABS = 1e50


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
            check_magnitude(x, self.source)
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
            yield finite_rows(batch, finite)
        if check and self.dropped == 0:
            self._all_finite = True


class RowFilter:
    """`FiniteRows` for a pass the caller drives, one batch at a time (several sources fed by
    one forward pass: `analysis.saved.gather_together`). `start` opens a pass; `take` returns
    the batch with its non-finite feature rows dropped (--drop-nonfinite; counted in `dropped`),
    or None for a batch holding such rows otherwise; `end` closes the pass and refuses it then,
    with the count over the whole pass."""

    def __init__(self, source: FeatureSource, options: AnalysisOptions) -> None:
        self.source = source
        self.options = options
        self.dropped = 0
        self._refused = 0

    def start(self) -> None:
        self.dropped = self._refused = 0

    def take(self, batch: Batch) -> Batch | None:
        x = batch.features
        check_magnitude(x, self.source)
        finite = finite_row_mask(x)
        if finite.all():
            return batch
        bad = int((~finite).sum())
        if not self.options.drop_nonfinite:
            self._refused += bad
            return None
        self.dropped += bad
        return finite_rows(batch, finite)

    def end(self) -> None:
        if self._refused:
            raise nonfinite_error(self._refused, self.source)


def finite_rows(batch: Batch, finite: np.ndarray) -> Batch:
    """The rows of `batch` where `finite` (B,) is True, in every array it holds."""
    return Batch(
        features=batch.features[finite],
        labels=None if batch.labels is None else batch.labels[finite],
        targets=None if batch.targets is None else batch.targets[finite],
        outputs=None if batch.outputs is None else batch.outputs[finite],
    )


def nonfinite_error(count: int, source: FeatureSource) -> InputError:
    """The refusal of `count` feature rows with NaN or Inf (without --drop-nonfinite)."""
    return InputError(
        f"'features' has {count} row(s) with NaN or Inf; pass --drop-nonfinite to compute the "
        "metrics from the finite rows only",
        path=source.path,
    )


def magnitude_error(largest: float, source: FeatureSource) -> InputError:
    """The refusal of features whose squares and sums would overflow float64."""
    return InputError(
        f"'features' has values up to {largest:.3g} in magnitude; expected |x| <= "
        f"{MAX_FEATURE_ABS:.0e} (larger values overflow the float64 sums of squares the metrics "
        "need); rescale the features (the collapse metrics do not depend on their scale)",
        path=source.path,
    )


def check_magnitude(x: np.ndarray, source: FeatureSource) -> None:
    """Raise `magnitude_error` when a finite entry of float64 x (B, D) exceeds MAX_FEATURE_ABS
    (NaN and Inf are left to `finite_row_mask`). Other dtypes cannot hold such values."""
    if x.dtype != np.float64 or x.size == 0:
        return
    top, bottom = float(x.max()), float(x.min())
    if -MAX_FEATURE_ABS <= bottom and top <= MAX_FEATURE_ABS:  # False for NaN and Inf: look closer
        return
    finite = np.abs(x[np.isfinite(x)])
    if finite.size and float(finite.max()) > MAX_FEATURE_ABS:
        raise magnitude_error(float(finite.max()), source)


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
