"""`ncc_accuracy` (the nearest-class-mean rule's accuracy) and `separation_fuzziness` (He & Su's
F = tr(Sigma_W pinv(Sigma_B)) = K_eff x nc1) against naive numpy written here: with and without a
head, on both NC1 routes, on the host and on the device path (`analysis.device` on CPU), merged
in any split, exact ties going to the lowest class index; and stats-only stores written before
the count existed still load, with `ncc_accuracy` null and the reason."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from ncinspect.analysis import device as devicestats
from ncinspect.analysis.classification import classification_statistics
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.passes import analyze_source
from ncinspect.analysis.saved import gather_statistics
from ncinspect.io.sources import ArraySource
from ncinspect.io.store.reader import open_store
from ncinspect.io.store.writer import StoreWriter, write_store
from ncinspect.metrics.classification import NO_NCC_COUNT, classification_metrics
from ncinspect.metrics.head import Head
from ncinspect.metrics.results import Result
from ncinspect.stats.classification import ClassScatter, ClassSums, plan_scatter
from tests.analysis.test_device import DEVICE, on_device

ROUTES = ("class_span", "dxd")


def naive_ncc_correct(x: np.ndarray, y: np.ndarray, k: int) -> int:
    """Rows whose nearest present class mean (Euclidean, float64, first index on a tie) is their
    label, by explicit loops."""
    x = np.asarray(x, dtype=np.float64)
    present = [c for c in range(k) if np.any(y == c)]
    means = {c: x[y == c].mean(axis=0) for c in present}
    hits = 0
    for row, label in zip(x, y, strict=True):
        best, best_d = -1, math.inf
        for c in present:  # increasing index; strict < keeps the lowest on a tie
            dist = float(np.sum((row - means[c]) ** 2))
            if dist < best_d:
                best, best_d = c, dist
        hits += int(best == label)
    return hits


def naive_fuzziness(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """tr(Sigma_W pinv(Sigma_B)): Sigma_W with divisor N, Sigma_B = Mc^T Mc / K_eff, the
    pseudo-inverse keeping eigenvalues above 1e-10 of the largest."""
    x = np.asarray(x, dtype=np.float64)
    present = [c for c in range(k) if np.any(y == c)]
    means = np.stack([x[y == c].mean(axis=0) for c in present])
    mu_g = x.mean(axis=0)
    dev = x - np.stack([means[present.index(int(c))] for c in y])
    sigma_w = dev.T @ dev / x.shape[0]
    mc = means - mu_g
    sigma_b = mc.T @ mc / len(present)
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-10, hermitian=True)))


def data(seed: int, k: int, d: int, n: int = 240, empty: int | None = None):
    """Noisy classes (float32 rows, as a store holds them): the nearest mean is often wrong."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 1.5
    y = rng.integers(0, k, size=n)
    if empty is not None:
        y[y == empty] = (empty + 1) % k
    x = (means[y] + rng.normal(size=(n, d)) * 1.2).astype(np.float32)
    w = means + rng.normal(size=(k, d))
    return x, y.astype(np.int64), w, rng.normal(size=k)


def source(x: np.ndarray, y: np.ndarray, k: int, head: Head | None) -> ArraySource:
    return ArraySource(
        path="synthetic.h5",
        task="classification",
        n=int(y.size),
        d=int(x.shape[1]),
        head=head,
        has_outputs=False,
        features=x,
        labels=y,
        width_without_head=None if head is not None else k,
    )


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("headed", [True, False], ids=["head", "headless"])
@pytest.mark.parametrize(("k", "d", "empty"), [(5, 12, None), (9, 6, None), (6, 10, 2)])
def test_both_keys_match_the_naive_computation(
    k: int, d: int, empty: int | None, headed: bool, route: str
) -> None:
    x, y, w, b = data(k * d, k, d, empty=empty)
    head = Head(w, b) if headed else None
    result = analyze_source(source(x, y, k, head), AnalysisOptions(nc1_route=route))
    expected = naive_ncc_correct(x, y, k)
    assert 0 < expected < y.size  # the count can be wrong either way
    assert result.metrics["ncc_accuracy"] == expected / y.size
    fuzz = result.metrics["separation_fuzziness"]
    assert fuzz == pytest.approx(naive_fuzziness(x, y, k), rel=1e-9)
    k_eff = result.info["k_eff"]
    assert k_eff == (k if empty is None else k - 1)
    assert fuzz == pytest.approx(k_eff * result.metrics["nc1"], rel=1e-14)


@pytest.mark.parametrize("route", ROUTES)
def test_a_tie_goes_to_the_lowest_class(route: str) -> None:
    """(0, 0) lies exactly between the means (-1, 0) of class 0 and (1, 0) of class 1: labelled 0
    it is a hit, labelled 1 a miss, whatever the route."""
    rows = {
        0: [(-2, 0), (0, 0), (-1, 1), (-1, -1)],  # mean (-1, 0)
        1: [(2, 0), (0, 0), (1, 1), (1, -1)],  # mean (1, 0)
        2: [(0, 6), (0, 4)],  # mean (0, 5)
    }
    x = np.array([[*r, 0.0, 0.0, 0.0] for c in rows for r in rows[c]], dtype=np.float32)
    y = np.array([c for c in rows for _ in rows[c]], dtype=np.int64)
    assert naive_ncc_correct(x, y, 3) == y.size - 1
    for head in (None, Head(np.eye(3, 5), None)):
        result = analyze_source(source(x, y, 3, head), AnalysisOptions(nc1_route=route))
        assert result.metrics["ncc_accuracy"] == (y.size - 1) / y.size


def test_any_split_merges_to_the_one_pass_count() -> None:
    x, y, _, _ = data(11, 7, 9)
    sums = ClassSums.from_batch(x, y, 7)
    for route in ROUTES:
        plan = plan_scatter(sums.moments(), None, None, route)
        whole = ClassScatter.from_batch(plan, x, y)
        parts = [ClassScatter.from_batch(plan, x[a:b], y[a:b]) for a, b in ((0, 5), (5, 97))]
        parts.append(ClassScatter.from_batch(plan, x[97:], y[97:]))
        for order in ((0, 1, 2), (2, 0, 1)):
            merged = parts[order[0]].merge(parts[order[1]]).merge(parts[order[2]])
            assert merged.ncc_correct == whole.ncc_correct == naive_ncc_correct(x, y, 7)


@pytest.mark.parametrize("headed", [True, False], ids=["head", "headless"])
@pytest.mark.parametrize("route", ROUTES)
def test_device_path_counts_as_the_host(headed: bool, route: str) -> None:
    """`extract --stats-only`'s device passes (on CPU here) count ncc_correct as the host does,
    with or without a head (a layer store's stats-only extraction has none)."""
    k, d = 6, 10
    x, y, w, b = data(5, k, d)
    src = source(x, y, k, Head(w, b) if headed else None)
    options = AnalysisOptions(nc1_route=route)
    host = classification_statistics(src, AnalysisOptions(chunk_rows=37, nc1_route=route))
    dev = devicestats.classification_statistics(src, on_device(src), DEVICE, options)
    (_, host_scatter, _), (dev_sums, dev_scatter, _) = host, dev
    assert dev_scatter.ncc_correct == host_scatter.ncc_correct == naive_ncc_correct(x, y, k)
    assert (dev_scatter.correct, dev_scatter.ncc_mismatch) == (
        host_scatter.correct,
        host_scatter.ncc_mismatch,
    )
    if not headed:
        assert dev_scatter.correct == dev_scatter.ncc_mismatch == 0
    metrics = classification_metrics(dev_sums.moments(dev_scatter.within), dev_scatter, src.head)
    assert metrics.metrics["ncc_accuracy"] == naive_ncc_correct(x, y, k) / y.size


def analysed(path: Path) -> Result:
    store = open_store(path)
    try:
        return analyze_source(store)
    finally:
        store.close()


def _stats_only_store(path: Path, headed: bool, drop_count: bool) -> tuple[Path, ArraySource]:
    """A stats-only store of synthetic rows; `drop_count`: as written before `ncc_correct`
    existed (its scatter record lacks the field)."""
    k, d = 5, 8
    x, y, w, b = data(3, k, d)
    src = source(x, y, k, Head(w, b) if headed else None)
    parts, attrs = gather_statistics(src, AnalysisOptions())
    layer = {} if headed else {"layer": "body.0", "layer_order": 1}
    with StoreWriter(
        path,
        task="classification",
        d=d,
        width=k,
        attrs={"run": "r", "epoch": 1, "split": "train", **layer},
        stats_only=True,
        headless=not headed,
    ) as writer:
        writer.set_statistics(parts, src.n, attrs)
        if headed:
            writer.set_head(w, b)
    if drop_count:
        with h5py.File(path, "r+") as f:
            assert "ncc_correct" in f["stats/scatter"].attrs
            del f["stats/scatter"].attrs["ncc_correct"]
    return path, src


@pytest.mark.parametrize("headed", [True, False], ids=["head", "headless"])
def test_stats_only_store_keeps_the_count(tmp_path: Path, headed: bool) -> None:
    path, src = _stats_only_store(tmp_path / "s.h5", headed, drop_count=False)
    from_rows = analyze_source(src)
    saved = analysed(path)
    assert saved.metrics["ncc_accuracy"] == from_rows.metrics["ncc_accuracy"]
    assert saved.metrics["separation_fuzziness"] == pytest.approx(
        from_rows.metrics["separation_fuzziness"], rel=1e-9
    )


@pytest.mark.parametrize("headed", [True, False], ids=["head", "headless"])
def test_older_stats_only_store_loads_with_the_key_null(tmp_path: Path, headed: bool) -> None:
    path, src = _stats_only_store(tmp_path / "old.h5", headed, drop_count=True)
    from_rows = analyze_source(src)
    old = analysed(path)
    assert math.isnan(old.metrics["ncc_accuracy"])
    assert old.info["undefined"]["ncc_accuracy"] == NO_NCC_COUNT
    assert old.to_json()["metrics"]["ncc_accuracy"] is None
    for key in (
        "nc1",
        "nc1_cdnv",
        "separation_fuzziness",
        *(("nc4", "accuracy") if headed else ()),
    ):
        assert old.metrics[key] == pytest.approx(from_rows.metrics[key], rel=1e-9), key


def test_ordinary_results_carry_a_null_layer_in_json(tmp_path: Path) -> None:
    x, y, w, b = data(2, 4, 6)
    write_store(tmp_path / "a.h5", features=x, weight=w, bias=b, labels=y, attrs={"epoch": 1})
    record = analysed(tmp_path / "a.h5").to_json()
    assert record["layer"] is None and record["layer_order"] is None
    assert {"separation_fuzziness", "ncc_accuracy"} <= set(record["metrics"])
