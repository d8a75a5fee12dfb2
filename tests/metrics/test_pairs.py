"""Reductions over class pairs in tiles (`metrics.pairs`, issue #15) against the dense forms.

The tiles must cover every entry of A B^T exactly once (each unordered pair once for the upper
tiles of a symmetric matrix), the streamed std must equal numpy's on the whole vector, the norm's
D x D route must fall back where it would cancel, the ETF distance must keep its digits near an
ETF (where the expanded form 2 - 2 <G, E_K> / ||G|| loses them), and every pair key of
`classification_metrics` must equal the dense computation of `tests/helpers/dense_pairs.py` (the
implementation before #15) to float64 rounding, for any tile size, with empty classes and zero
rows, K < D and K > D.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncinspect.analysis.arrays import analyze_arrays
from ncinspect.metrics import pairs
from ncinspect.metrics.classification import classification_metrics
from ncinspect.metrics.head import Head
from ncinspect.metrics.pairs import (
    PairMatrix,
    PairMoments,
    PairSum,
    etf_distance,
    tile_shape,
)
from ncinspect.stats.classification import ClassMoments, ClassScatter
from tests.helpers.dense_pairs import PAIR_KEYS, dense_pair_metrics, upper
from tests.helpers.dense_pairs import etf_distance as dense_etf
from tests.helpers.synth import random_orthogonal

TILES = (1, 2, 7, None)  # rows (and columns) per tile; None: the default (one tile here)


def _tiles_for(k: int) -> tuple[int | None, ...]:
    """TILES (tiles of one entry only while K is small: K^2 tiles) and K - 1, K, K + 5."""
    return (*(t for t in TILES if t is None or t * 50 >= k), k - 1, k, k + 5)


def _close(actual: float, expected: float, rtol: float = 1e-12, atol: float = 0.0) -> bool:
    if math.isnan(expected) or math.isnan(actual):
        return math.isnan(expected) and math.isnan(actual)
    return math.isclose(actual, expected, rel_tol=rtol, abs_tol=atol)


# --------------------------------------------------------------------------------------------
# the tiles


@pytest.mark.parametrize(("k", "width"), [(1, 1), (5, 5), (13, 13), (13, 4), (4, 13)])
@pytest.mark.parametrize("tile", [1, 3, 5, 13, 20])
def test_tiles_cover_every_entry_once(k: int, width: int, tile: int) -> None:
    rng = np.random.default_rng(k * 31 + width)
    a, b = rng.normal(size=(k, 3)), rng.normal(size=(width, 3))
    dense = a @ b.T
    seen = np.zeros((k, width), dtype=int)
    rebuilt = np.full((k, width), np.nan)
    for t in PairMatrix(a, b, tile=tile).tiles():
        assert t.values.shape == (t.stop - t.start, t.col_stop - t.col_start)
        assert t.values.shape[0] <= tile and t.values.shape[1] <= tile
        seen[t.rows, t.cols] += 1
        rebuilt[t.rows, t.cols] = t.values
    assert (seen == 1).all()
    np.testing.assert_allclose(rebuilt, dense, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("k", [1, 2, 9, 14])
@pytest.mark.parametrize("tile", [1, 2, 4, 9, 14, 30])
def test_upper_tiles_hold_each_pair_once_and_its_values(k: int, tile: int) -> None:
    """Upper tiles: every entry j >= i in exactly one tile, none below the diagonal but inside
    the diagonal tiles; the pair parts are exactly the dense upper triangle."""
    rng = np.random.default_rng(k + tile)
    a = rng.normal(size=(k, 4))
    keep = rng.random(k) > 0.3
    seen = np.zeros((k, k), dtype=int)
    parts, kept_parts = [], []
    for t in PairMatrix(a, upper=True, tile=tile).tiles():
        seen[t.rows, t.cols] += 1
        assert t.col_stop > t.start  # never a tile wholly below the diagonal
        assert t.above or t.on_diagonal
        parts += [p.ravel() for p in t.pair_parts()]
        kept_parts += [p.ravel() for p in t.pair_parts(keep=keep)]
        r, c = t.diagonal()
        np.testing.assert_array_equal(t.start + r, t.col_start + c)
    covered = np.triu(np.ones((k, k), dtype=int))
    assert (seen[covered == 1] == 1).all()
    dense = a @ a.T
    got = np.sort(np.concatenate([np.zeros(0), *parts]))
    np.testing.assert_allclose(got, np.sort(upper(dense)), rtol=1e-14, atol=1e-14)
    got_kept = np.sort(np.concatenate([np.zeros(0), *kept_parts]))
    want_kept = np.sort(upper(dense[np.ix_(keep, keep)]))
    np.testing.assert_allclose(got_kept, want_kept, rtol=1e-14, atol=1e-14)


def test_tile_shape_fits_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pairs, "TILE_BYTES", 8 * 100)  # 100 entries: 10 x 10 tiles
    assert tile_shape((1000, 1000)) == (10, 10)
    assert tile_shape((1000, 4)) == (25, 4)  # narrow: more rows, same entries
    assert tile_shape((3, 3)) == (3, 3)
    assert tile_shape((1000, 1000), tile=7) == (7, 7)
    assert tile_shape((5, 1000), tile=0) == (1, 1)
    monkeypatch.setattr(pairs, "TILE_BYTES", 1)
    assert tile_shape((50, 50)) == (1, 1)


# --------------------------------------------------------------------------------------------
# streamed sums and moments


@pytest.mark.parametrize("offset", [0.0, 1e6, -3e8])
def test_pair_moments_equal_numpy_for_any_batching(offset: float) -> None:
    """Two passes per batch and Chan's merge: the std equals np.std(ddof=1) on the whole vector
    to 1e-12 even when the spread is 1e-8 of the values (a sum of squares minus n mean^2 loses
    every digit there), for batches of 1, uneven splits and any merge order."""
    rng = np.random.default_rng(5)
    values = offset + rng.normal(size=2001)
    want_std, want_mean = float(np.std(values, ddof=1)), float(np.mean(values))
    for cuts in ([1] * 50, [7, 1, 300, 2], [2001], [1000, 1001], list(range(1, 63))):
        moments, total = PairMoments(), PairSum()
        edges = np.cumsum([0, *cuts])
        edges = np.unique(np.r_[edges[edges < values.size], values.size])
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            moments.add(values[a:b])
            total.add(values[a:b].reshape(-1, 1))
        moments.add(values[:0])  # an empty batch changes nothing
        assert moments.count == values.size == total.count
        assert math.isclose(moments.std(), want_std, rel_tol=1e-12)
        assert math.isclose(moments.mean, want_mean, rel_tol=1e-14, abs_tol=1e-14)
        assert math.isclose(total.mean, want_mean, rel_tol=1e-14, abs_tol=1e-14)
    # merging partial moments in another order
    halves = [PairMoments(), PairMoments()]
    halves[1].add(values[1000:])
    halves[0].add(values[:1000])
    halves[1].merge(halves[0])
    assert math.isclose(halves[1].std(), want_std, rel_tol=1e-12)
    assert math.isnan(PairMoments().std()) and math.isnan(PairSum().mean)


# --------------------------------------------------------------------------------------------
# the norm and the ETF distance


@pytest.mark.parametrize(("k", "d"), [(40, 6), (9, 16), (30, 30)])
@pytest.mark.parametrize("tile", [1, 7, None])
def test_norm_by_every_route_equals_the_dense_norm(k: int, d: int, tile: int | None) -> None:
    rng = np.random.default_rng(k * d)
    a = rng.normal(size=(k, d)) + 0.5
    b = a + 0.3 * rng.normal(size=(k, d))
    want_sym = float(np.linalg.norm(a @ a.T))
    want = float(np.linalg.norm(a @ b.T))
    assert math.isclose(PairMatrix(a, upper=True, tile=tile).norm(), want_sym, rel_tol=1e-13)
    assert math.isclose(PairMatrix(a, tile=tile).norm(), want_sym, rel_tol=1e-13)
    assert math.isclose(PairMatrix(a, b, tile=tile).norm(), want, rel_tol=1e-13)


def test_norm_falls_back_to_tiles_where_the_gram_route_cancels() -> None:
    """Rows of A nearly orthogonal to those of B: ||A B^T|| is 5e-8 of ||A|| ||B||, so A B^T's
    own entries carry rounding of eps x that ratio (kappa), and <A^T A, B^T B> would err by
    eps x kappa^2; the norm must stay within the entries' rounding of the dense one."""
    rng = np.random.default_rng(3)
    k, d = 60, 8
    rotate = random_orthogonal(rng, d)
    big = np.zeros((k, d))
    big[:, 4:] = 1e3 * rng.normal(size=(k, 4))
    small = np.zeros((k, d))
    small[:, :4] = rng.normal(size=(k, 4))
    a, b = (big + 1e-4 * small) @ rotate, small @ rotate
    want = float(np.linalg.norm(a @ b.T))
    rounding = 1e-16 * float(np.linalg.norm(a) * np.linalg.norm(b)) / want  # 2e-9
    naive = math.sqrt(abs(float(np.vdot(a.T @ a, b.T @ b))))
    assert abs(naive - want) > 1e3 * rounding * want  # the D x D route really is off here
    for tile in (1, 7, 59):
        assert math.isclose(PairMatrix(a, b, tile=tile).norm(), want, rel_tol=rounding)


def _simplex(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    """(K, D) centred simplex ETF rows (D >= K - 1) in a random frame."""
    centring = np.eye(k) - 1.0 / k
    u, _, _ = np.linalg.svd(centring)
    return 3.0 * centring @ u[:, : k - 1] @ random_orthogonal(rng, d)[: k - 1]


def _expanded(gram: np.ndarray) -> float:
    """2 - 2 <G, E_K> / ||G||_F: the expansion the tiles must not use (it cancels near an ETF)."""
    k = gram.shape[0]
    inner = (np.trace(gram) - gram.sum() / k) / math.sqrt(k - 1)
    return math.sqrt(max(0.0, 2.0 - 2.0 * inner / np.linalg.norm(gram)))


def test_etf_distance_keeps_its_digits_near_an_etf() -> None:
    """Simplex ETFs perturbed by 0 to 1e-5, K <= D + 1, tiles of 1 to K + 5: the tiled distance
    equals the dense one to 1e-6 of itself (plus rounding at an exact ETF), where the expanded
    form errs by up to the distance itself."""
    rng = np.random.default_rng(8)
    worst_expanded = 0.0
    for k, d in ((10, 9), (40, 64), (120, 119)):
        e = _simplex(rng, k, d)
        for eps in (0.0, 1e-9, 1e-8, 1e-5):
            a = e + eps * rng.normal(size=e.shape)
            b = 2.0 * a + eps * rng.normal(size=e.shape)
            for x, y in ((a, None), (b, a)):
                gram = x @ (x if y is None else y).T
                want = dense_etf(gram)
                if eps:
                    worst_expanded = max(worst_expanded, abs(_expanded(gram) - want) / want)
                for tile in _tiles_for(k):
                    for upper_tiles in (False, True) if y is None else (False,):
                        m = PairMatrix(x, y, upper=upper_tiles, tile=tile)
                        got = etf_distance(m)
                        assert abs(got - want) <= 1e-6 * want + 1e-14, (k, eps, tile, got, want)
    assert worst_expanded > 1e-2  # so the tolerance above tells the two forms apart


@pytest.mark.parametrize(("k", "d"), [(50, 5), (120, 16)])
def test_etf_distance_above_the_floor(k: int, d: int) -> None:
    """K - 1 > D: the distance has a floor, its norm comes from the D x D Gram matrices."""
    rng = np.random.default_rng(k)
    a = rng.normal(size=(k, d))
    b = a + 0.2 * rng.normal(size=(k, d))
    for tile in (1, 13, None):
        assert _close(etf_distance(PairMatrix(a, upper=True, tile=tile)), dense_etf(a @ a.T))
        assert _close(etf_distance(PairMatrix(b, a, tile=tile)), dense_etf(b @ a.T))
    with pytest.raises(ValueError, match="K >= 2"):
        etf_distance(PairMatrix(np.zeros((4, 3)), upper=True))


# --------------------------------------------------------------------------------------------
# the classification pair keys


def _statistics(
    rng: np.random.Generator,
    k: int,
    d: int,
    empty: tuple[int, ...] = (),
    zero_mean: int | None = None,
) -> tuple[ClassMoments, ClassScatter]:
    """Unbalanced class moments; classes in `empty` have no samples; class `zero_mean`'s mean
    is the global mean (a zero centred mean, dropped from the angles)."""
    counts = rng.integers(1, 30, k)
    counts[list(empty)] = 0
    means = rng.normal(size=(k, d)) * 2.0 + rng.normal(size=d)
    means[list(empty)] = 0.0
    if zero_mean is not None:
        rest = (counts > 0) & (np.arange(k) != zero_mean)
        means[zero_mean] = counts[rest] @ means[rest] / counts[rest].sum()
    m2 = rng.random(k) * counts * d
    moments = ClassMoments(counts=counts.astype(np.int64), means=means, m2=m2)
    return moments, ClassScatter(scatter=np.eye(d), n=moments.n, route="dxd")


CASES = [  # (K, D, empty classes, class with a zero centred mean, zero rows of W)
    (6, 16, (), None, ()),
    (12, 16, (3, 7), 5, (0,)),
    (30, 5, (0,), None, (2, 29)),
    (45, 8, (1, 2, 44), 10, ()),
    (3, 4, (), None, (1,)),
    (2, 3, (), None, ()),
]


@pytest.mark.parametrize(("k", "d", "empty", "zero_mean", "zero_rows"), CASES)
@pytest.mark.parametrize("global_mean", ["weighted", "unweighted"])
def test_pair_keys_equal_the_dense_computation_for_any_tile(
    k: int,
    d: int,
    empty: tuple[int, ...],
    zero_mean: int | None,
    zero_rows: tuple[int, ...],
    global_mean: str,
) -> None:
    rng = np.random.default_rng(k * 100 + d)
    moments, scatter = _statistics(
        rng, k, d, empty, zero_mean if global_mean == "weighted" else None
    )
    w = rng.normal(size=(k, d)) + 0.5 * moments.means
    w[list(zero_rows)] = 0.0
    head = Head(w, rng.normal(size=k))
    want = dense_pair_metrics(moments, head, global_mean)
    reference = classification_metrics(moments, scatter, head, global_mean=global_mean)
    for tile in _tiles_for(k):
        got = classification_metrics(moments, scatter, head, global_mean=global_mean, tile=tile)
        bad = [
            (key, got.metrics[key], want[key])
            for key in PAIR_KEYS
            if not _close(got.metrics[key], want[key], atol=1e-15)
        ]
        assert not bad, (tile, bad)
        assert got.warnings == reference.warnings
        info = dict(got.info)
        riesz_log = info.pop("gnc2_riesz_log", None)  # a streamed log-sum-exp: to rounding
        assert info == {k: v for k, v in reference.info.items() if k != "gnc2_riesz_log"}
        if riesz_log is not None:
            assert riesz_log == pytest.approx(reference.info["gnc2_riesz_log"], rel=1e-12)
        for key in ("gnc2_log", "gnc2_riesz"):  # the uniformity pair means, any tile size
            assert _close(got.metrics[key], reference.metrics[key], atol=1e-15, rtol=1e-12), key
    if zero_rows:
        assert any("classifier-row vector(s) are zero" in w for w in reference.warnings)
    if zero_mean is not None and global_mean == "weighted":
        assert any("centred class-mean vector(s) are zero" in w for w in reference.warnings)


def test_pair_keys_without_a_head_and_with_coinciding_means() -> None:
    rng = np.random.default_rng(4)
    moments, scatter = _statistics(rng, 9, 6)
    moments.means[4] = moments.means[2]  # two classes at the same mean: cdnv undefined
    for tile in (1, 3, None):
        got = classification_metrics(moments, scatter, None, tile=tile)
        want = dense_pair_metrics(moments, None)
        assert math.isnan(got.metrics["nc1_cdnv"]) and math.isnan(want["nc1_cdnv"])
        assert "two class means coincide" in got.info["undefined"]["nc1_cdnv"]
        for key in ("nc2_equiangle_means", "nc2_maxangle_means", "nc2_etf_means"):
            assert _close(got.metrics[key], want[key]), key


def test_analysis_does_not_depend_on_the_tile_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole pipeline (`analyze_arrays`) with 3 x 3 tiles against one tile: every key to
    1e-12 (the pair keys by rounding only, the rest identical)."""
    rng = np.random.default_rng(2)
    k, d = 14, 6
    centres = rng.normal(size=(k, d)) * 3.0
    y = rng.integers(0, k - 1, 400)  # the last class has no samples
    x = centres[y] + rng.normal(size=(y.size, d))
    w, b = centres + 0.3 * rng.normal(size=(k, d)), rng.normal(size=k)
    whole = analyze_arrays(x, w, b, labels=y)
    monkeypatch.setattr(pairs, "TILE_BYTES", 8 * 9)
    tiled = analyze_arrays(x, w, b, labels=y)
    assert set(whole.metrics) == set(tiled.metrics)
    for key, value in whole.metrics.items():
        assert _close(tiled.metrics[key], value, atol=1e-15), key
    assert whole.info["k_eff"] == k - 1
