"""`devicestats`: the torch accumulators of `extract --stats-only` on a device, against the host's
own numpy passes (`analysis.classification`, `analysis.regression`: `*_statistics`) fed
the same batches: statistics to 1e-12 relative, counts exactly, metrics to 1e-10; and
`extract --stats-only` with the device path equal to the host path's store.

The device is CPU (the accumulators run in float64 on any device), or the one named by
NCINSPECT_TEST_DEVICE (`cuda`): `bench/gpu_check.sh` runs this file on a GPU that way."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ncinspect
from ncinspect.analysis import device as devicestats
from ncinspect.analysis.classification import classification_statistics
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.regression import regression_from_statistics, regression_statistics
from ncinspect.analysis.rows import FiniteRows
from ncinspect.cli import app
from ncinspect.errors import InputError
from ncinspect.io.sources import ArraySource
from ncinspect.io.store.reader import open_store
from ncinspect.metrics.classification import classification_metrics
from ncinspect.metrics.head import Head
from ncinspect.stats.classification import ClassSums
from ncinspect.stats.device import DeviceBatch
from tests.helpers.cli import runner
from tests.helpers.paths import FIXTURES
from tests.helpers.results import assert_same_results

# where the accumulators run: CPU here, a GPU under bench/gpu_check.sh
DEVICE = torch.device(os.environ.get("NCINSPECT_TEST_DEVICE", "cpu"))
STATS_RTOL = 1e-12
METRIC_RTOL = 1e-10
CHUNK = 37  # rows per batch: the last batch is short


def close(got: Any, want: Any, rtol: float = STATS_RTOL) -> None:
    """Arrays within rtol of the largest entry of `want` (relative in norm); ints exactly."""
    if isinstance(want, int | np.integer) or (
        isinstance(want, np.ndarray) and want.dtype.kind in "iu"
    ):
        np.testing.assert_array_equal(got, want)
        return
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-300)
    err = float(np.max(np.abs(got - want), initial=0.0)) / scale
    assert err <= rtol, (err, rtol)


def same_metrics(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for key, w in want.items():
        g = got[key]
        if math.isnan(w):
            assert math.isnan(g), key
        else:
            assert g == pytest.approx(w, rel=METRIC_RTOL, abs=1e-14), key


def on_device(source: ArraySource, chunk: int = CHUNK) -> Callable[[bool], Iterator[DeviceBatch]]:
    """The source's batches as `DeviceBatch`es of tensors on DEVICE (float32 features, as
    extracted)."""

    def tensor(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(DEVICE)

    def batches(outputs: bool) -> Iterator[DeviceBatch]:
        for b in source.batches(chunk, outputs=outputs):
            features = tensor(b.features)
            assert features is not None
            yield DeviceBatch(
                features=features,
                labels=tensor(b.labels),
                targets=tensor(b.targets),
                outputs=tensor(b.outputs),
            )

    return batches


def classes(
    n: int, d: int, k: int, seed: int, absent: int | None = None, bad_rows: tuple[int, ...] = ()
) -> ArraySource:
    """Noisy class means (float32 rows) and a head near them: accuracy and NC4 far from 0 and 1."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 2.0
    labels = rng.integers(0, k, size=n)
    if absent is not None:
        labels[labels == absent] = (absent + 1) % k
    x = (means[labels] + rng.normal(size=(n, d)) * 1.5).astype(np.float32)
    for i, row in enumerate(bad_rows):
        x[row, i % d] = [np.nan, np.inf, -np.inf][i % 3]
    weight = means + rng.normal(size=(k, d)) * 1.5
    bias = rng.normal(size=k)
    return ArraySource(
        path="synthetic.h5",
        task="classification",
        n=n,
        d=d,
        head=Head(weight, bias),
        has_outputs=False,
        features=x,
        labels=labels.astype(np.int64),
    )


def compare_classification(source: ArraySource, options: AnalysisOptions, **kw: Any) -> Any:
    host_options = AnalysisOptions(
        chunk_rows=CHUNK, drop_nonfinite=options.drop_nonfinite, nc1_route=options.nc1_route
    )
    want = classification_statistics(source, host_options, **kw)
    got = devicestats.classification_statistics(source, on_device(source), DEVICE, options, **kw)
    (ws, wc, wd), (gs, gc, gd) = want, got
    assert gd == wd
    close(gs.counts, ws.counts)
    close(gs.sums, ws.sums)
    assert (gc.n, gc.correct, gc.ncc_mismatch, gc.route) == (
        wc.n,
        wc.correct,
        wc.ncc_mismatch,
        wc.route,
    )
    close(gc.scatter, wc.scatter)
    close(gc.within, wc.within)
    metrics = [
        classification_metrics(s.moments(c.within), c, source.head).metrics
        for s, c in ((gs, gc), (ws, wc))
    ]
    same_metrics(*metrics)
    return want


@pytest.mark.parametrize(
    ("k", "d", "absent", "route"),
    [(5, 16, None, "class_span"), (12, 8, None, "dxd"), (6, 16, 3, "class_span")],
    ids=["class_span", "dxd", "empty_class"],
)
def test_classification_equals_host(k: int, d: int, absent: int | None, route: str) -> None:
    source = classes(300, d, k, seed=k + d, absent=absent)
    sums, scatter, _ = compare_classification(source, AnalysisOptions())
    assert scatter.route == route
    assert 0 < scatter.correct < scatter.n and scatter.ncc_mismatch > 0  # the counts can differ
    assert (sums.counts == 0).sum() == (0 if absent is None else 1)


def test_classification_forced_dxd_route_and_combine() -> None:
    """nc1_route is honoured, and `combine` (distributed: pass 1 over every process) is applied
    before pass 2 plans on it."""
    source = classes(200, 16, 5, seed=3)
    other = ClassSums.from_batch(
        classes(90, 16, 5, seed=4).features, classes(90, 16, 5, seed=4).labels, 5
    )
    _, scatter, _ = compare_classification(
        source, AnalysisOptions(nc1_route="dxd"), combine=lambda s: s.merge(other)
    )
    assert scatter.route == "dxd" and scatter.n == 200


def test_classification_nonfinite_rows_refused_or_dropped() -> None:
    source = classes(300, 16, 5, seed=7, bad_rows=(0, 41, 42, 299))
    with pytest.raises(InputError) as host:
        classification_statistics(source, AnalysisOptions(chunk_rows=CHUNK))
    with pytest.raises(InputError) as dev:
        devicestats.classification_statistics(source, on_device(source), DEVICE, AnalysisOptions())
    assert str(dev.value) == str(host.value) and "has 4 row(s) with NaN or Inf" in str(dev.value)
    sums, scatter, dropped = compare_classification(source, AnalysisOptions(drop_nonfinite=True))
    assert dropped == 4 and sums.n == scatter.n == 296


def regression(
    n: int, d: int, t: int, seed: int, outputs: bool, bad_rows: tuple[int, ...] = ()
) -> ArraySource:
    """Features near a t-dimensional subspace plus a common offset, targets linear in them; one
    all-zero row (left out of the uncentred unit rows and counted)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, t))
    x = latent @ rng.normal(size=(t, d)) + 0.3 * rng.normal(size=(n, d)) + 1.0
    x[5] = 0.0
    weight = rng.normal(size=(t, d)) / d
    bias = rng.normal(size=t)
    targets = latent * 2.0 + 0.1 * rng.normal(size=(n, t))
    x = x.astype(np.float32)
    for row in bad_rows:
        x[row, 0] = np.nan
    out = None
    if outputs:
        out = (targets + 0.5 * rng.normal(size=(n, t))).astype(np.float32)
    return ArraySource(
        path="synthetic.h5",
        task="regression",
        n=n,
        d=d,
        head=Head(weight, bias),
        has_outputs=outputs,
        features=x,
        targets=targets.astype(np.float32),
        outputs=out,
    )


def compare_regression(source: ArraySource, options: AnalysisOptions) -> Any:
    host_options = AnalysisOptions(chunk_rows=CHUNK, drop_nonfinite=options.drop_nonfinite)
    rows = FiniteRows(source, host_options)
    wm, wu, wc = regression_statistics(source, rows, None)
    gm, gu, gc, dropped = devicestats.regression_statistics(
        source, on_device(source), DEVICE, options
    )
    assert dropped == rows.dropped
    assert (gm.n, gm.n_zero_norm, gm.unit_second) == (wm.n, wm.n_zero_norm, wm.unit_second)
    for name in ("feature_mean", "feature_scatter", "target_mean", "target_scatter", "rss"):
        close(getattr(gm, name), getattr(wm, name))
    for g, w in ((gu, wu), (gc, wc)):
        assert (g.n, g.n_zero_norm) == (w.n, w.n_zero_norm)
        np.testing.assert_array_equal(g.basis, w.basis)
        close(g.gram, w.gram)
    predictions = "outputs" if source.has_outputs else "W h + b"
    metrics = [
        regression_from_statistics(m, u, c, source.head, predictions, options)[0].metrics
        for m, u, c in ((gm, gu, gc), (wm, wu, wc))
    ]
    same_metrics(*metrics)
    return gm, gu, gc, dropped


@pytest.mark.parametrize("outputs", [True, False], ids=["stored_outputs", "w_h_plus_b"])
def test_regression_equals_host(outputs: bool) -> None:
    moments, uncentred, centred, _ = compare_regression(
        regression(300, 24, 3, seed=11, outputs=outputs), AnalysisOptions()
    )
    assert uncentred.n_zero_norm == 1 and centred.n_zero_norm == 0
    assert moments.rss > 0


def test_regression_nonfinite_rows_and_targets() -> None:
    source = regression(300, 24, 3, seed=12, outputs=True, bad_rows=(3, 100))
    with pytest.raises(InputError) as host:
        regression_statistics(source, FiniteRows(source, AnalysisOptions(chunk_rows=CHUNK)))
    with pytest.raises(InputError) as dev:
        devicestats.regression_statistics(source, on_device(source), DEVICE, AnalysisOptions())
    assert str(dev.value) == str(host.value)
    moments, _, _, dropped = compare_regression(source, AnalysisOptions(drop_nonfinite=True))
    assert dropped == 2 and moments.n == 298
    assert source.targets is not None and source.outputs is not None
    source.targets[[7, 8]] = np.nan  # non-finite targets and outputs cannot be dropped
    source.outputs[9] = np.inf
    options = AnalysisOptions(chunk_rows=CHUNK, drop_nonfinite=True)
    with pytest.raises(InputError) as host:
        regression_statistics(source, FiniteRows(source, options))
    with pytest.raises(InputError) as dev:
        devicestats.regression_statistics(source, on_device(source), DEVICE, options)
    assert str(dev.value) == str(host.value)
    assert "'targets' has 2 row(s)" in str(dev.value) and "'outputs' has 1 row(s)" in str(dev.value)


def test_extract_stats_only_device_path_equals_host_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ncinspect extract --stats-only` on DEVICE, by the device path and by the host path: the
    same records (1e-12, counts exact) and the same report (1e-10)."""
    calls: list[str] = []
    real = devicestats.gather_statistics

    def spy(source: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(source.task)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(devicestats, "gather_statistics", spy)
    jobs = [
        ("digits_ce/epoch_300.pt", "digits_test.npz"),
        ("reg_wd/checkpoint_ep300.pth", "regress_test.npz"),
    ]
    for kind, forced in (("host", False), ("device", True)):
        if DEVICE.type == "cpu":
            monkeypatch.setattr(devicestats, "ON_CPU", forced)
        else:  # a GPU takes the device path by itself: the host path is the forced one
            monkeypatch.setattr(devicestats, "applies", lambda device, on=forced: on)
        for ckpt, data in jobs:
            args = ["extract", str(FIXTURES / "runs" / ckpt)]
            args += ["--data", str(FIXTURES / "data" / data)]
            args += ["--out", str(tmp_path / kind), "--stats-only", "--device", DEVICE.type]
            args += ["--batch-size", "48", "--trust-code", "-q"]
            res = runner.invoke(app, args)
            assert res.exit_code == 0, res.output
    assert calls == ["classification", "regression"]  # the device path ran, and only when forced
    host = sorted((tmp_path / "host").rglob("*.h5"))
    device = sorted((tmp_path / "device").rglob("*.h5"))
    assert [p.relative_to(tmp_path / "host") for p in host] == [
        p.relative_to(tmp_path / "device") for p in device
    ]
    assert len(host) == 2
    for a, b in zip(host, device, strict=True):
        want, got = open_store(a), open_store(b)
        try:
            assert want.statistics is not None and got.statistics is not None
            (ws,), (gs,) = want.statistics, got.statistics
            assert ws.attrs == gs.attrs and ws.parts.keys() == gs.parts.keys()
            for name, record in ws.parts.items():
                other = gs.parts[name]
                assert (other.kind, other.scope) == (record.kind, record.scope)
                # pass 2 of regression projects on the PCA basis of pass 1's scatter, which
                # amplifies the scatter's float64 differences (4e-17 here) by the eigengap's
                # conditioning (basis and gram about 1e-12 apart): 1e-10 there
                rtol = METRIC_RTOL if name in ("uncentred", "centred") else STATS_RTOL
                for field, value in record.fields.items():
                    if isinstance(value, str) or value is None:
                        assert other.fields[field] == value
                    else:
                        close(other.fields[field], value, rtol)
        finally:
            want.close()
            got.close()
    expected = ncinspect.analyze([tmp_path / "host"])
    assert {r.task for r in expected} == {"classification", "regression"}
    assert_same_results(expected, ncinspect.analyze([tmp_path / "device"]), rtol=METRIC_RTOL)
