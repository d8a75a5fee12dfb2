"""`report --split`, `plot --split` and `analyze(..., splits=...)` on stores extracted from the
shipped digits runs: only the stores of the named splits come out, their nc1 is a naive numpy
nc1 of the store's own rows, `--calibrate-on` still reads the split it fits on, a split no store
has is one usage error, and `--split` does not take the paired panel's splits away."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ncinspect.api import analyze
from tests.helpers.cli import cli
from tests.helpers.paths import FIXTURES, ROOT

RUNS = ("digits_ce", "digits_ls")
N_CHECKPOINTS = 4  # per run: epochs 10, 50, 150, 300


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Train and test stores of both runs (the run.json model path is relative to the root)."""
    root = tmp_path_factory.mktemp("split_option") / "features"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        for split in ("train", "test"):
            res = cli(
                "extract",
                *(FIXTURES / "runs" / run for run in RUNS),
                "--data",
                FIXTURES / "data" / f"digits_{split}.npz",
                "--split",
                split,
                "--out",
                root,
                "--trust-code",
                "-q",
            )
            assert res.exit_code == 0, res.stderr
        yield root


def _report(*args: str | Path) -> list[dict[str, Any]]:
    res = cli("report", *args, "-f", "json", "--no-ufm")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)["results"]


@pytest.fixture(scope="module")
def train_report(out: Path) -> list[dict[str, Any]]:
    return _report(out, "--split", "train")


@pytest.fixture(scope="module")
def test_report(out: Path) -> list[dict[str, Any]]:
    return _report(out, "--split", "test")


def _stores(out: Path, split: str) -> set[str]:
    return {str(p) for p in out.rglob(f"*.{split}.h5")}


def naive_nc1(path: str | Path) -> float:
    """tr(Sigma_W pinv(Sigma_B)) / K from the store's rows, in float64: Sigma_W the within-class
    scatter over N, Sigma_B the scatter of the class means about the (sample-weighted) global
    mean over K, pinv by an eigendecomposition keeping eigenvalues above 1e-10 of the largest."""
    with h5py.File(path, "r") as f:
        h = np.asarray(f["features"], dtype=np.float64)
        y = np.asarray(f["labels"])
    classes = np.unique(y)
    k, n = len(classes), len(y)
    mu_g = h.mean(axis=0)
    means = np.stack([h[y == c].mean(axis=0) for c in classes])
    centred = h - means[np.searchsorted(classes, y)]
    sigma_w = centred.T @ centred / n
    mc = means - mu_g
    sigma_b = mc.T @ mc / k
    vals, vecs = np.linalg.eigh(sigma_b)
    keep = vals > 1e-10 * vals.max()
    assert keep.sum() == k - 1  # the centred means span K - 1 directions
    pinv = (vecs[:, keep] / vals[keep]) @ vecs[:, keep].T
    return float(np.trace(sigma_w @ pinv) / k)


def test_report_split_keeps_that_split_and_nc1_is_the_naive_one(
    out: Path, train_report: list[dict[str, Any]]
) -> None:
    assert len(_stores(out, "test")) == len(_stores(out, "train")) == 2 * N_CHECKPOINTS
    assert {r["split"] for r in train_report} == {"train"}
    assert {r["source"] for r in train_report} == _stores(out, "train")
    # rel 1e-8: both are float64 over the same float32 rows; an unweighted global mean (the
    # classes are not balanced) moves nc1 by about 4e-5 relative, so the check tells them apart
    for record in train_report:
        expected = naive_nc1(record["source"])
        assert record["metrics"]["nc1"] == pytest.approx(expected, rel=1e-8), record["source"]
    # the oracle tells the checkpoints apart (a constant nc1 would not pass)
    assert len({round(r["metrics"]["nc1"], 6) for r in train_report}) == len(train_report)


def test_a_split_no_store_has_is_one_usage_error(out: Path) -> None:
    for value in ("val", "train,val"):
        res = cli("report", out, "--split", value, "-f", "json")
        assert res.exit_code == 2, (res.exit_code, res.stderr)
        assert "Traceback" not in res.stderr and res.stdout == ""
        (line,) = res.stderr.strip().splitlines()
        assert "--split" in line and "val" in line, line
        found = line.rpartition("splits found: ")[2]
        assert sorted(found.split(", ")) == ["test", "train"], line


def test_calibrate_on_reads_a_split_left_out_by_split(
    out: Path, train_report: list[dict[str, Any]], test_report: list[dict[str, Any]]
) -> None:
    calibrated = _report(out, "--split", "test", "--calibrate-on", "train")
    assert {r["split"] for r in calibrated} == {"test"}
    assert {r["source"] for r in calibrated} == _stores(out, "test")
    train = {r["checkpoint"]: r for r in train_report}
    own = {r["checkpoint"]: r["metrics"]["temperature"] for r in test_report}
    assert len(train) == len(own) == len(calibrated) == 2 * N_CHECKPOINTS
    for record in calibrated:
        fitted_on = train[record["checkpoint"]]
        assert record["metrics"]["temperature"] == fitted_on["metrics"]["temperature"]
        assert record["info"]["calibration_split"] == f"train ({fitted_on['source']})"
    # the test split's own fits differ: the equality above is not a coincidence
    assert any(own[c] != pytest.approx(train[c]["metrics"]["temperature"], rel=1e-3) for c in own)


def test_split_with_the_paired_splits_is_a_usage_error(out: Path) -> None:
    for pair in (("--nc-split", "train", "--eval-split", "test"), ("--nc-split", "train")):
        res = cli("report", out, "--split", "train", *pair, "-f", "json")
        assert res.exit_code == 2, (res.exit_code, res.stderr)
        assert "Traceback" not in res.stderr and res.stdout == ""
        assert "--split" in res.stderr


def test_analyze_splits_gives_the_cli_nc1(out: Path, test_report: list[dict[str, Any]]) -> None:
    results = analyze([out], splits=["test"])
    assert {r.split for r in results} == {"test"}
    by_source = {r.source: r.metrics["nc1"] for r in results}
    assert set(by_source) == _stores(out, "test")
    cli_nc1 = {r["source"]: r["metrics"]["nc1"] for r in test_report}
    assert by_source.keys() == cli_nc1.keys()
    for source, value in by_source.items():
        assert value == pytest.approx(cli_nc1[source], rel=1e-12)
        assert value == pytest.approx(naive_nc1(source), rel=1e-6)
    both = analyze([out], splits=["train", "test"])
    assert sorted(r.split for r in both) == ["test"] * 8 + ["train"] * 8


def _spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Any]:
    """Record the first argument of each call of ncinspect.render.plots.NAME."""
    from ncinspect.render import plots

    seen: list[Any] = []
    real = getattr(plots, name)

    def spy(first: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(list(first))
        return real(first, *args, **kwargs)

    monkeypatch.setattr(plots, name, spy)
    return seen


def test_plot_split_draws_that_split(
    out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = _spy(monkeypatch, "plot_runs")
    figures = tmp_path / "plots"
    res = cli("plot", out, "--split", "train", "--out", figures, "--formats", "png")
    assert res.exit_code == 0, res.stderr
    assert "Traceback" not in res.stderr
    written = sorted(p.name for p in figures.iterdir())
    assert "classification_trajectories.png" in written
    assert all((figures / name).stat().st_size > 1000 for name in written)
    (runs,) = drawn
    assert sorted(run.name for run in runs) == sorted(RUNS)
    assert {run.split for run in runs} == {"train"}
    assert {r.split for run in runs for r in run.results} == {"train"}


def test_plot_split_leaves_the_paired_panel_its_two_splits(
    out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = _spy(monkeypatch, "plot_runs")
    paired = _spy(monkeypatch, "build_paired_figure")
    figures = tmp_path / "plots"
    args = ("--nc-split", "train", "--eval-split", "test", "--split", "test")
    res = cli("plot", out, *args, "--out", figures, "--formats", "png")
    assert res.exit_code == 0, res.stderr
    assert (figures / "paired_nc1_nc2.png").stat().st_size > 1000
    assert (figures / "classification_trajectories.png").is_file()
    (runs,) = drawn
    assert {r.split for run in runs for r in run.results} == {"test"}
    (pairs,) = paired
    assert len(pairs) == 2 * N_CHECKPOINTS
    assert all(p.nc is not None and p.eval is not None for p in pairs)
    assert {p.nc.split for p in pairs} == {"train"} and {p.eval.split for p in pairs} == {"test"}


def test_plot_names_the_paired_option_whose_split_is_missing(out: Path, tmp_path: Path) -> None:
    args = ("--split", "train", "--nc-split", "val", "--eval-split", "test")
    res = cli("plot", out, *args, "--out", tmp_path / "p", "--formats", "png")
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    assert "--nc-split" in res.stderr and "val" in res.stderr and "--split:" not in res.stderr


def test_a_split_name_given_as_one_string_is_that_split(out: Path) -> None:
    assert {r.split for r in analyze([out], splits="test", calibration=False)} == {"test"}


def test_stores_of_other_splits_are_not_analysed(
    out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--split test` opens every store to read its split but analyses only the test ones: a
    store without a split name is left alone (its rows never read)."""
    import shutil

    from ncinspect import api

    root = tmp_path / "mixed"
    shutil.copytree(out / "digits_ce", root / "digits_ce")
    from ncinspect.io.store.writer import write_store

    rng = np.random.default_rng(0)
    write_store(
        root / "nosplit" / "a.h5",
        features=rng.normal(size=(20, 4)),
        weight=rng.normal(size=(2, 4)),
        labels=np.arange(20) % 2,
        attrs={"run": "nosplit"},
    )
    analysed: list[str] = []
    real = api.analyze_source

    def spy(source: Any, options: Any) -> Any:
        analysed.append(str(source.path))
        return real(source, options)

    monkeypatch.setattr(api, "analyze_source", spy)
    results = analyze([root], splits=["test"], calibration=False)
    assert len(results) == N_CHECKPOINTS and {r.split for r in results} == {"test"}
    assert sorted(Path(p).name for p in analysed) == sorted(Path(r.source).name for r in results)
