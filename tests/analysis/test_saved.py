"""`extract --stats-only`: stores that keep the sufficient statistics and the head instead of the
N x D features (`analysis.saved`, `io.store.statistics`), and report on them equal (1e-9
relative) report on full feature stores."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import ncinspect
from ncinspect.cli import app
from ncinspect.errors import InputError, StoreError
from ncinspect.extraction.config import ExtractConfig
from ncinspect.extraction.inspection import describe
from ncinspect.extraction.run import run_extract
from ncinspect.io.store.reader import open_store
from ncinspect.metrics.keys import CALIBRATION_KEYS
from ncinspect.render.describe import format_description
from tests.helpers.cli import runner
from tests.helpers.paths import FIXTURES
from tests.helpers.results import RTOL, assert_same_results


def extract(run: str, data: str, out: Path, **kwargs) -> None:
    kwargs.setdefault("batch_size", 64)
    config = ExtractConfig(
        checkpoints=(FIXTURES / "runs" / run,),
        data=str(FIXTURES / "data" / data),
        out=out,
        trust_code=True,
        **kwargs,
    )
    run_extract(config)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Feature stores and stats-only stores of one classification and one regression run."""
    root = tmp_path_factory.mktemp("stats_only")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for kind, extra in (("features", {}), ("stats", {"stats_only": True})):
            extract("digits_ce", "digits_test.npz", root / kind, **extra)
            extract("reg_wd", "regress_test.npz", root / kind, **extra)
    finally:
        torch.set_num_threads(threads)
    return {"features": root / "features", "stats": root / "stats", "root": root}


def test_every_metric_matches_the_feature_store(stores: dict[str, Path]) -> None:
    expected = ncinspect.analyze([stores["features"]])
    got = ncinspect.analyze([stores["stats"]])
    assert len(expected) == 8 and {r.task for r in expected} == {"classification", "regression"}
    assert_same_results(expected, got)
    for x, y in zip(expected, got, strict=True):
        for key in ("k_eff", "nc1_rank", "nc1_route", "pca_rank", "weight_rank", "predictions"):
            assert x.info.get(key) == y.info.get(key), key
        if x.task == "regression":
            assert y.info["predictions"] == "outputs"


def test_report_cli_reads_stats_only_stores(stores: dict[str, Path], tmp_path: Path) -> None:
    import json

    outs = {}
    for kind in ("features", "stats"):
        out = tmp_path / f"{kind}.json"
        res = runner.invoke(app, ["report", str(stores[kind]), "-f", "json", "-o", str(out), "-q"])
        assert res.exit_code == 0, res.output
        outs[kind] = {r["checkpoint"]: r for r in json.loads(out.read_text())["results"]}
    assert outs["features"].keys() == outs["stats"].keys()
    for ckpt, a in outs["features"].items():
        b = outs["stats"][ckpt]
        for key, v in a["metrics"].items():
            w = b["metrics"][key]
            if key == "mean_norm_features":  # a sum over rows: a stats-only store has none
                assert w is None and v is not None
                continue
            if key in CALIBRATION_KEYS:  # from the logits: a stats-only store keeps none
                assert w is None
                continue
            if v is None:
                assert w is None
            else:
                assert w == pytest.approx(v, rel=RTOL, abs=0), (ckpt, key)
    res = runner.invoke(
        app, ["report", str(stores["stats"]), "--by", "run", "-q", "--width", "200"]
    )
    assert res.exit_code == 0, res.output
    assert "digits_ce" in res.output and "reg_wd" in res.output


def test_store_holds_statistics_not_features(stores: dict[str, Path]) -> None:
    path = stores["stats"] / "digits_ce" / "epoch_300.pt.test.h5"
    full = stores["features"] / "digits_ce" / "epoch_300.pt.test.h5"
    with h5py.File(path) as f:
        assert f.attrs["content"] == "statistics"
        assert f.attrs["format_version"] == 1
        assert not {"features", "labels", "targets", "outputs"} & set(f)
        assert set(f["stats"]) == {"sums", "scatter"}
        assert f["stats/sums"].attrs["type"] == "ClassSums"
        assert f["stats/sums"].attrs["scope"] == "global"
        assert f["stats/scatter"].attrs["scope"] == "shard"
        assert f["stats/sums/counts"].shape == (10,)
        assert f["stats/sums/sums"].shape == (10, 64)
        assert f["stats/sums/counts"][()].sum() == 360
        assert f["head/weight"].shape == (10, 64)
        assert f.attrs["n"] == 360 and f.attrs["d"] == 64 and f.attrs["k"] == 10
    with h5py.File(full) as f:
        assert f.attrs["content"] == "features"
    src = open_store(path)
    try:
        assert src.statistics is not None and src.n == 360 and src.d == 64
        with pytest.raises(StoreError, match="holds saved statistics only"):
            next(src.batches())
    finally:
        src.close()


def test_inspect_describes_a_stats_only_store(stores: dict[str, Path]) -> None:
    path = stores["stats"] / "reg_wd" / "epoch_010.pt.test.h5"
    desc = describe(path)
    assert desc["kind"] == "store" and desc["task"] == "regression"
    names = [d["name"] for d in desc["datasets"]]
    assert "features" not in names
    assert "stats/moments/feature_scatter" in names and "stats/centred/gram" in names
    assert desc["attributes"]["content"] == "statistics"
    text = format_description(desc)
    assert "stats/uncentred/basis  (64, " in text
    res = runner.invoke(app, ["inspect", str(path)])
    assert res.exit_code == 0 and "content: statistics" in res.output


def test_small_batches_match_their_feature_store(tmp_path: Path) -> None:
    """Batch size 7 (the last batch short, stats merged over 52 batches): still 1e-9. (Against
    batch 64 it is not: the model's float32 features differ in the last bits between batch
    sizes, which moves nc1 by about 1e-8; the statistics themselves do not depend on it.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for kind, extra in (("features", {}), ("stats", {"stats_only": True})):
            extract("digits_ce", "digits_test.npz", tmp_path / kind, batch_size=7, **extra)
    finally:
        torch.set_num_threads(threads)
    worst = assert_same_results(
        ncinspect.analyze([tmp_path / "features"]), ncinspect.analyze([tmp_path / "stats"])
    )
    assert worst < RTOL


def test_rerun_skips_complete_stats_only_stores(stores: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(stores["stats"] / "digits_ce", tmp_path / "digits_ce")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.h5")}
    config = ExtractConfig(
        checkpoints=(FIXTURES / "runs" / "digits_ce",),
        data=str(FIXTURES / "data" / "digits_test.npz"),
        out=tmp_path,
        stats_only=True,
    )
    outcomes = run_extract(config)
    assert {o.status for o in outcomes} == {"skipped"} and {o.n for o in outcomes} == {360}
    assert before == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.h5")}


def _broken(stores: dict[str, Path], tmp_path: Path, change) -> Path:
    path = tmp_path / "digits_ce" / "epoch_300.pt.test.h5"
    path.parent.mkdir()
    shutil.copy(stores["stats"] / "digits_ce" / "epoch_300.pt.test.h5", path)
    with h5py.File(path, "a") as f:
        change(f)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda f: f.__delitem__("stats/scatter"),
            "group 'stats' holds sums; expected sums, scatter for a classification store "
            "(missing: scatter; unexpected: none); re-run extract --stats-only",
        ),
        (
            lambda f: f.__delitem__("stats"),
            "attribute 'content' is 'statistics' but group 'stats' is missing",
        ),
        (
            lambda f: f.__delitem__("stats/scatter/within"),
            "group 'stats/scatter' (ClassScatter) lacks field(s) within and has unexpected "
            "field(s) none",
        ),
        (
            lambda f: (
                f.__delitem__("stats/sums/sums"),
                f["stats/sums"].create_dataset("sums", data=np.zeros((10, 63))),
            ),
            "'stats/sums/sums' has shape (10, 63) dtype float64, expected a numeric array of "
            "shape (10, 64) (K or T = 10, D = 64 from 'head/weight')",
        ),
        (
            lambda f: f["stats/scatter"].attrs.__setitem__("n", 100),
            "'stats/scatter' covers 100 rows but pass 1",
        ),
        (
            lambda f: f["stats/sums"].attrs.__setitem__("type", "ClassMoments"),
            "group 'stats/sums' holds a ClassMoments (global); expected a ClassSums (global)",
        ),
    ],
)
def test_bad_stats_group_is_one_error_line(
    stores: dict[str, Path], tmp_path: Path, change, message: str
) -> None:
    path = _broken(stores, tmp_path, change)
    with pytest.raises(InputError) as info:
        ncinspect.analyze([path])
    assert message in str(info.value)
    assert str(path) in str(info.value)
    res = runner.invoke(app, ["report", str(path)])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ncinspect: error: ") and message in lines[0]


def test_nonfinite_rows_refused_or_dropped(tmp_path: Path) -> None:
    d = np.load(FIXTURES / "data" / "digits_test.npz")
    x, y = d["x"].copy(), d["y"]
    x[[3, 200]] = np.nan
    data = tmp_path / "nan_test.npz"
    np.savez(data, x=x, y=y)
    ckpt = FIXTURES / "runs" / "digits_ce" / "epoch_300.pt"
    base = {"checkpoints": (ckpt,), "data": str(data), "trust_code": True}
    with pytest.raises(InputError, match=r"'features' has 2 row\(s\) with NaN or Inf; pass "):
        run_extract(ExtractConfig(out=tmp_path / "a", stats_only=True, **base))
    assert not list((tmp_path / "a").rglob("*.h5"))
    run_extract(ExtractConfig(out=tmp_path / "b", stats_only=True, drop_nonfinite=True, **base))
    (got,) = ncinspect.analyze([tmp_path / "b"])
    assert got.n == 358 and got.info["nonfinite_rows_dropped"] == 2
    assert "2 row(s) with NaN or Inf features were dropped" in got.warnings
    run_extract(ExtractConfig(out=tmp_path / "c", **base))
    (want,) = ncinspect.analyze([tmp_path / "c"], drop_nonfinite=True)
    assert_same_results([want], [got])
