"""Reductions over class pairs in tiles: no K x K matrix is ever held.

Owns the machinery every pair metric shares. `PairMatrix` is a pair matrix M = A B^T (the Gram
matrix of the centred class means, of the classifier rows, W Mc^T) that is never formed whole:
`PairMatrix.tiles` yields it a block of rows by a block of columns at a time (`PairTile`: the
block's values, its pairs i < j in a few parts, its diagonal), only the blocks on and above the
diagonal when M is symmetric (each unordered pair once, half the products), and
`PairMatrix.norm` gives ||M||_F (from the D x D Gram matrices when they are smaller and do not
cancel, else tile by tile). `PairSum` streams a mean over pairs, `PairMoments` the count, mean
and squared deviations (Chan's merge: the std over pairs with divisor pairs - 1 is that of the
dense vector to float64 rounding), and `EtfDistance` ||M / ||M||_F - E_K||_F with the entries of
E_K = (I - 11^T/K) / sqrt(K - 1) written per tile. `sweep` feeds each tile, computed once, to
several such reducers (`PairReducer`: an `add(tile)` method), as `metrics.classification` does
for the pair keys of one matrix.

Memory: one tile of about `TILE_BYTES` of float64 (tile x tile entries, at most K x K' when
smaller) and a few temporaries of its size, never K x K'; cache-sized, so the per-entry work
runs from cache while each product still reuses a block of B over a block of rows. Results do
not depend on the tile size beyond float64 rounding (summation order); the tests run tiles of 1
up to more than K. Computes no metric key itself and never reads data.
Axes: K rows of A (classes), K' rows of B, D feature dim.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# A tile of a pair matrix holds about this many bytes of float64: square tiles of
# sqrt(TILE_BYTES / 8) rows and columns (362 at 1 MiB), widened when M has fewer columns. Read
# when tiles are cut, so a test may change it; `tile=` arguments set the side directly.
TILE_BYTES = 1 << 20
# ||A B^T||_F^2 = <A^T A, B^T B> is used only when the two D x D Gram matrices are no further
# from parallel than this (Cauchy-Schwarz: ||A^T A||_F ||B^T B||_F <= CANCELLATION x <.,.>), so
# the inner product keeps its digits; rows of A nearly orthogonal to those of B take the tiles.
CANCELLATION = 16.0


def tile_shape(shape: tuple[int, int], tile: int | None = None) -> tuple[int, int]:
    """(rows, columns) per tile of a pair matrix of `shape` (K, K'): tile x tile when `tile` is
    given, else square tiles of about `TILE_BYTES` of float64, with more rows when K' is
    narrower; never more than the matrix, at least 1 x 1."""
    k, width = max(1, shape[0]), max(1, shape[1])
    if tile is not None:
        side = max(1, int(tile))
        return min(k, side), min(width, side)
    entries = max(1, TILE_BYTES // 8)
    side = max(1, math.isqrt(entries))
    cols = min(width, side)
    return min(k, max(side, entries // cols)), cols


@functools.lru_cache(maxsize=8)
def _strict_upper(n: int) -> tuple[np.ndarray, np.ndarray]:
    """np.triu_indices(n, 1), kept for the few tile sides in use."""
    rows, cols = np.triu_indices(n, 1)
    rows.flags.writeable = False
    cols.flags.writeable = False
    return rows, cols


@dataclass(frozen=True)
class PairTile:
    """Rows start:stop and columns col_start:col_stop of a pair matrix M (K x K'): values
    (stop - start, col_stop - col_start) float64. Entry (r, c) is the pair (i, j) =
    (start + r, col_start + c)."""

    start: int
    stop: int
    col_start: int
    col_stop: int
    values: np.ndarray

    @property
    def rows(self) -> slice:
        """The tile's rows i of M, for per-row quantities (norms, variances): q[tile.rows]."""
        return slice(self.start, self.stop)

    @property
    def cols(self) -> slice:
        """The tile's columns j of M, for per-column quantities: q[tile.cols]."""
        return slice(self.col_start, self.col_stop)

    @property
    def above(self) -> bool:
        """Whether every entry is a pair i < j (the tile lies right of M's diagonal)."""
        return self.col_start >= self.stop

    @property
    def on_diagonal(self) -> bool:
        """Whether the tile is a square block centred on M's diagonal."""
        return self.col_start == self.start and self.col_stop == self.stop

    def pairs(self, keep: np.ndarray | None = None) -> np.ndarray:
        """Bool (tile shape): the pairs i < j (M square), both kept when keep (K,) bool is
        given."""
        i = np.arange(self.start, self.stop)[:, None]
        j = np.arange(self.col_start, self.col_stop)[None, :]
        mask = j > i
        if keep is not None:
            mask &= keep[self.rows, None] & keep[None, self.cols]
        return mask

    def pair_parts(
        self, values: np.ndarray | None = None, keep: np.ndarray | None = None
    ) -> list[np.ndarray]:
        """The entries of `values` (tile shape; default the tile's own) at the tile's pairs
        i < j (M square; both kept with `keep`), as arrays whose entries are exactly those: the
        whole block when it lies above the diagonal (a view, no copy), the strict upper
        triangle of a diagonal block, nothing below the diagonal. Reduce each part and
        combine (`PairSum.add`, `PairMoments.add` take any shape)."""
        v = self.values if values is None else values
        if keep is not None:
            return [v[self.pairs(keep)]]
        if self.above:
            return [v]
        if self.col_stop - 1 <= self.start:  # every j <= i
            return []
        if self.on_diagonal:
            return [v[_strict_upper(self.stop - self.start)]]
        return [v[self.pairs()]]

    def diagonal(self) -> tuple[np.ndarray, np.ndarray]:
        """(r, c) positions in the tile of M's diagonal entries i = j (M square)."""
        first = max(self.start, self.col_start)
        last = max(first, min(self.stop, self.col_stop))
        i = np.arange(first, last)
        return i - self.start, i - self.col_start


class PairMatrix:
    """M = A B^T (a (K, D), b (K', D); B = A when None), held as tiles, never whole.

    upper (B = A only): only the tiles on and right of the diagonal (each unordered pair i < j
    in exactly one tile, half the products); reductions over all entries then count the pairs
    twice and the diagonal once. tile: the side of the tiles (`tile_shape`). When one tile
    holds all of M it is computed once and kept (it is no larger than a tile).
    """

    def __init__(
        self,
        a: np.ndarray,
        b: np.ndarray | None = None,
        *,
        upper: bool = False,
        tile: int | None = None,
    ) -> None:
        if upper and b is not None:
            raise ValueError("upper tiles need a symmetric pair matrix (b None)")
        self.a = np.asarray(a, dtype=np.float64)
        self.b = self.a if b is None else np.asarray(b, dtype=np.float64)
        self.symmetric = b is None
        self.upper = upper
        self.tile_rows, self.tile_cols = tile_shape(self.shape, tile)
        self._norm: float | None = None
        self._whole: PairTile | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.a.shape[0], self.b.shape[0])

    @property
    def one_tile(self) -> bool:
        """Whether a single tile holds all of M."""
        return self.tile_rows >= self.shape[0] and self.tile_cols >= self.shape[1]

    def tiles(self) -> Iterator[PairTile]:
        """M's tiles, row block by row block, each row block's column blocks left to right
        (with `upper`: from its diagonal block on)."""
        k, width = self.shape
        if self.one_tile:
            if self._whole is None:
                self._whole = PairTile(0, k, 0, width, self.a @ self.b.T)
            yield self._whole
            return
        for start in range(0, k, self.tile_rows):
            stop = min(k, start + self.tile_rows)
            rows = self.a[start:stop]
            edges = [start, stop] if self.upper else [0]
            while edges[-1] < width:
                edges.append(min(width, edges[-1] + self.tile_cols))
            for c0, c1 in zip(edges[:-1], edges[1:], strict=True):
                yield PairTile(start, stop, c0, c1, rows @ self.b[c0:c1].T)

    def norm(self) -> float:
        """||M||_F. One tile: that tile's norm (the dense computation). Else, when K and K'
        both exceed D, from the D x D Gram matrices, ||A B^T||_F^2 = <A^T A, B^T B>_F (K D^2
        products instead of K K' D; a sum of squares when B = A), unless that inner product
        cancels (`CANCELLATION`); else one pass over the tiles."""
        if self._norm is None:
            self._norm = self._frobenius()
        return self._norm

    def _frobenius(self) -> float:
        if self.one_tile:
            return float(np.linalg.norm(next(self.tiles()).values))
        d = self.a.shape[1]
        if min(self.shape) > d:
            x = self.a.T @ self.a
            if self.symmetric:
                return float(np.linalg.norm(x))
            y = self.b.T @ self.b
            s2 = float(np.vdot(x, y))
            if s2 > 0 and float(np.linalg.norm(x)) * float(np.linalg.norm(y)) <= (
                CANCELLATION * s2
            ):
                return math.sqrt(s2)
        squares = Compensated()
        for t in self.tiles():
            squares.add(square_sum(t, t.values, self.upper))
        return math.sqrt(max(squares.value, 0.0))


def _sumsq(x: np.ndarray) -> float:
    return float(np.einsum("ij,ij->", x, x)) if x.ndim == 2 else float(np.dot(x, x))


def square_sum(t: PairTile, values: np.ndarray, upper: bool) -> float:
    """Sum of the squares of `values` (tile shape) over the entries of M the tile stands for:
    all of them, or, for the tiles of a symmetric M's upper part (`upper`), the pairs twice and
    the diagonal once."""
    if not upper:
        return _sumsq(values)
    r, c = t.diagonal()
    diag = values[r, c]
    pairs = sum((_sumsq(part) for part in t.pair_parts(values)), 0.0)
    return 2.0 * pairs + float(np.dot(diag, diag))


@dataclass
class Compensated:
    """A float sum with Neumaier's compensation: adding many partial sums (one per tile, up to
    K^2 of them) loses no more than a rounding or two."""

    total: float = 0.0
    carry: float = 0.0

    def add(self, value: float) -> None:
        t = self.total + value
        if abs(self.total) >= abs(value):
            self.carry += (self.total - t) + value
        else:
            self.carry += (value - t) + self.total
        self.total = t

    @property
    def value(self) -> float:
        return self.total + self.carry


@dataclass
class PairSum:
    """Count and (compensated) sum of a stream of values, in batches: their mean."""

    count: int = 0
    total: Compensated = field(default_factory=Compensated)

    def add(self, values: np.ndarray) -> None:
        """Add a batch of values (any shape)."""
        if values.size:
            self.count += int(values.size)
            self.total.add(float(np.sum(values)))

    @property
    def mean(self) -> float:
        """The mean of the values; NaN when there are none."""
        return self.total.value / self.count if self.count else math.nan


@dataclass
class PairMoments:
    """Count, mean and sum of squared deviations (m2) of a stream of values, in batches.

    Values are accumulated relative to a fixed `shift` (the first batch's mean), so the sums are
    of numbers on the scale of the spread, not of the values; each batch is reduced in two
    passes (its mean, then the squared deviations about it) and merged with Chan et al.'s
    update, m2 = m2_a + m2_b + delta^2 n_a n_b / n, exact in exact arithmetic and stable: the
    std equals np.std(values, ddof=1) of all values at once to float64 rounding, for any
    batching (the one-pass sum of squares minus n mean^2 would lose every digit when the spread
    is small against the mean, as for the cosines near an ETF).
    """

    count: int = 0
    m2: float = 0.0
    shift: float = 0.0
    total: Compensated = field(default_factory=Compensated)  # sum of (value - shift)

    @property
    def mean(self) -> float:
        """The mean of the values; NaN when there are none."""
        return self.shift + self.total.value / self.count if self.count else math.nan

    def add(self, values: np.ndarray) -> None:
        """Add a batch of values (any shape)."""
        if not values.size:
            return
        shift = self.shift if self.count else float(np.mean(values))
        dev = values - shift
        total = float(np.sum(dev))
        dev -= total / dev.size
        batch = PairMoments(count=int(dev.size), m2=_sumsq(dev), shift=shift)
        batch.total.add(total)
        self.merge(batch)

    def merge(self, other: PairMoments) -> None:
        """Fold `other` (the moments of more values) into these."""
        if not other.count:
            return
        if not self.count:
            self.count, self.m2, self.shift = other.count, other.m2, other.shift
            self.total = Compensated(other.total.total, other.total.carry)
            return
        na, nb = float(self.count), float(other.count)
        offset = other.shift - self.shift
        delta = offset + (other.total.value / nb - self.total.value / na)
        self.m2 += other.m2 + delta * delta * (na * nb / (na + nb))
        self.total.add(other.total.total)
        self.total.add(other.total.carry)
        if offset:
            self.total.add(offset * nb)
        self.count += other.count

    def std(self, ddof: int = 1) -> float:
        """sqrt(m2 / (count - ddof)); NaN when count <= ddof."""
        if self.count <= ddof:
            return math.nan
        return math.sqrt(max(self.m2, 0.0) / (self.count - ddof))


class EtfDistance:
    """||M / ||M||_F - E_K||_F of a square pair matrix M (K x K), fed M's tiles in any order.

    Each tile gets the dense form's own arithmetic: diff = M / ||M||_F + 1 / (K sqrt(K - 1))
    everywhere, - 1 / sqrt(K - 1) on the diagonal (E_K's entries), squared and summed (pairs
    twice for the upper tiles of a symmetric M, `upper`). Expanding instead,
    2 - 2 <M, E_K> / ||M||_F, would cancel near an ETF: an error of about 1e-8 where the
    distance itself is 1e-8. Needs K >= 2 and ||M||_F > 0 (`PairMatrix.norm`).
    """

    def __init__(self, k: int, norm: float, upper: bool) -> None:
        if k < 2 or not norm > 0:
            raise ValueError(f"the ETF distance needs K >= 2 and ||M||_F > 0 (K = {k})")
        self.norm = norm
        self.upper = upper
        self.shift = 1.0 / (k * math.sqrt(k - 1))
        self.diagonal = 1.0 / math.sqrt(k - 1)
        self._squares = Compensated()

    def add(self, t: PairTile) -> None:
        diff = t.values / self.norm
        diff += self.shift
        r, c = t.diagonal()
        diff[r, c] -= self.diagonal
        self._squares.add(square_sum(t, diff, self.upper))

    @property
    def value(self) -> float:
        return math.sqrt(max(self._squares.value, 0.0))


class PairReducer(Protocol):
    """Anything that folds the tiles of a pair matrix into a result, tile by tile, in any
    order; it must not change a tile's values (the other reducers of a sweep see the same
    array, and a one-tile matrix keeps it)."""

    def add(self, t: PairTile) -> None: ...


def sweep(m: PairMatrix, reducers: Iterable[PairReducer | None]) -> None:
    """Feed every tile of M to each reducer (None: skipped), each tile computed once; no tile is
    computed when there is no reducer."""
    live = [r for r in reducers if r is not None]
    if not live:
        return
    for t in m.tiles():
        for r in live:
            r.add(t)


def etf_distance(m: PairMatrix) -> float:
    """||M / ||M||_F - E_K||_F of a square pair matrix, in one pass over its tiles after its
    norm (`EtfDistance`); ValueError when K < 2 or M = 0."""
    etf = EtfDistance(m.shape[0], m.norm(), m.upper)
    sweep(m, (etf,))
    return etf.value
