"""Collapse through depth: layer stores left out of every ordinary view, analysed alone with
`analyze(layers=True)`, grouped into depth profiles in model order (`ncinspect.depth`), the law
of data separation fitted exactly on synthetic layers whose F decays geometrically, and
`report --by layer` (its tables, JSON, CSV, options and refusals); a headless regression
layer's stats-only store (host and device passes) predicts nothing, so mse and r2 are null."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from ncinspect.analysis import device as devicestats
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.passes import analyze_source
from ncinspect.analysis.saved import gather_statistics
from ncinspect.api import analyze
from ncinspect.depth import (
    REGRESSION_FIT,
    depth_profiles,
    final_profiles,
    label_profiles,
    separation_fit,
)
from ncinspect.errors import UsageError
from ncinspect.io.sources import ArraySource
from ncinspect.io.store.reader import open_store
from ncinspect.io.store.writer import StoreWriter, write_store
from ncinspect.metrics.classification import HEAD_KEYS
from ncinspect.metrics.results import run_key
from tests.analysis.test_device import DEVICE, on_device
from tests.helpers.cli import cli
from tests.helpers.oracle_nc import classification_oracle

K, D, PER_CLASS = 4, 6, 8
# (name, layer_order): neither the names' nor the orders' values are the ranks 0..3; the last
# feeds the head
LAYERS = (("stem", 2), ("body.10", 5), ("body.9", 11), ("fc:input", 20))
HEAD_LAYER = "fc:input"


def _base() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class means (small integers), labels, and within-class noise in eighths whose mean is
    exactly 0 in every class (each row has its negation in the class): every value and every
    power-of-two scaling of it is exact in float32, so the stored features are the exact ones."""
    rng = np.random.default_rng(7)
    means = rng.integers(-6, 7, size=(K, D)).astype(np.float64)
    half = rng.integers(-8, 9, size=(K, PER_CLASS // 2, D)) / 8.0
    noise = np.concatenate([half, -half], axis=1).reshape(K * PER_CLASS, D)
    labels = np.repeat(np.arange(K), PER_CLASS)
    return means, labels, noise


def _write_layers(
    folder: Path, run: str, epoch: int, q: float, split: str = "train", ordinary: bool = True
) -> None:
    """One checkpoint of `run`: its ordinary store and its layer stores, layer l (in model
    order) with the class means fixed and the within-class noise scaled by q^l, so F_l =
    F_0 q^(2l) exactly; the last layer has the head."""
    means, y, noise = _base()
    checkpoint = f"/ckpt/{run}/epoch_{epoch:03d}.pt"
    attrs = {"run": run, "epoch": epoch, "split": split, "checkpoint": checkpoint}
    weight = means - means.mean(axis=0)
    name = f"epoch_{epoch:03d}.pt.{split}"
    if ordinary:
        x = means[y] + noise
        write_store(folder / f"{name}.h5", features=x, weight=weight, labels=y, attrs=attrs)
    for rank, (layer, order) in enumerate(LAYERS):
        x = means[y] + noise * q**rank
        head = layer == HEAD_LAYER
        write_store(
            folder / f"{name}.layers" / f"{layer}.h5",
            features=x,
            weight=weight if head else None,
            labels=y,
            width=K,
            attrs={**attrs, "layer": layer, "layer_order": order},
        )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs (ce: q = 1/2, ls: q = 1/4), two checkpoints each, ordinary and layer stores."""
    root = tmp_path_factory.mktemp("depth")
    for run, q in (("ce", 0.5), ("ls", 0.25)):
        for epoch in (10, 300):
            _write_layers(root / run, run, epoch, q)
    return root


# ---------------------------------------------------------------------------------------------
# the fit


def test_fit_recovers_an_exact_geometric_decay() -> None:
    for rho, f0, n in ((0.5, 3.0, 2), (0.81, 120.0, 7), (1.3, 1e-4, 12)):
        fit = separation_fit([f0 * rho**layer for layer in range(n)], [str(i) for i in range(n)])
        assert fit.decay == pytest.approx(rho, rel=1e-12)
        assert fit.intercept == pytest.approx(math.log(f0), rel=1e-12, abs=1e-12)
        assert fit.undefined == {}
        if n > 2:  # two points always fit exactly; R^2 = 1 is no test there
            assert fit.r2 == pytest.approx(1.0, abs=1e-12)


def test_fit_is_least_squares_in_log_f() -> None:
    f = [5.0, 2.0, 1.5, 0.3, 0.2]
    slope, intercept = np.polyfit(np.arange(5), np.log(f), 1)
    fit = separation_fit(f, list("abcde"))
    assert fit.decay == pytest.approx(math.exp(slope), rel=1e-12)
    assert fit.intercept == pytest.approx(intercept, rel=1e-12)
    resid = np.log(f) - (intercept + slope * np.arange(5))
    total = np.sum((np.log(f) - np.mean(np.log(f))) ** 2)
    assert fit.r2 == pytest.approx(1 - np.sum(resid**2) / total, rel=1e-12)
    assert 0 < fit.r2 < 1


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ([], "needs at least 2 layers (found 0)"),
        ([2.0], "needs at least 2 layers (found 1)"),
        ([2.0, 0.0, 1.0], "at layer b (0.0)"),
        ([2.0, 1.0, -1.0], "at layer c (-1.0)"),
        ([math.nan, 1.0], "at layer a (null)"),
        ([2.0, math.inf], "at layer b (inf)"),
    ],
)
def test_fit_undefined_with_the_reason(values: list[float], fragment: str) -> None:
    fit = separation_fit(values, list("abc")[: len(values)])
    assert math.isnan(fit.decay) and math.isnan(fit.r2)
    assert set(fit.undefined) == {"separation_decay", "separation_r2"}
    assert fragment in fit.undefined["separation_decay"]


def test_flat_f_has_rho_one_and_no_r2() -> None:
    fit = separation_fit([0.7, 0.7, 0.7], ["a", "b", "c"])
    assert fit.decay == 1.0
    assert math.isnan(fit.r2)
    assert "zero variance" in fit.undefined["separation_r2"]
    assert "separation_decay" not in fit.undefined


# ---------------------------------------------------------------------------------------------
# analyze: layer stores left out, or alone


def test_layer_stores_are_left_out_by_default(runs: Path, tmp_path: Path) -> None:
    left: list[str] = []
    with_layers = analyze([runs], left_out=left)
    assert all(r.layer is None for r in with_layers)
    assert len(left) == 2 * 2 * len(LAYERS) and all(".layers" in p for p in left)
    copy = tmp_path / "plain"
    shutil.copytree(runs, copy, ignore=shutil.ignore_patterns("*.layers"))
    plain = analyze([copy])
    assert [r.to_json()["metrics"] for r in with_layers] == [r.to_json()["metrics"] for r in plain]
    assert [Path(r.source).name for r in with_layers] == [Path(r.source).name for r in plain]


def test_default_report_is_unchanged_by_layer_stores(runs: Path, tmp_path: Path) -> None:
    copy = tmp_path / "plain"
    shutil.copytree(runs, copy, ignore=shutil.ignore_patterns("*.layers"))
    for args in ((), ("-f", "json"), ("-f", "csv"), ("--by", "epoch")):
        with_layers = cli("report", runs, "--width", "160", *args)
        plain = cli("report", copy, "--width", "160", *args)
        assert with_layers.exit_code == plain.exit_code == 0, with_layers.stderr
        assert with_layers.stdout == plain.stdout.replace(str(copy), str(runs))


def test_layers_alone(runs: Path) -> None:
    left: list[str] = []
    results = analyze([runs], layers=True, left_out=left)
    assert len(results) == 2 * 2 * len(LAYERS) and len(left) == 4
    assert {r.layer for r in results} == {name for name, _ in LAYERS}
    ordinary = analyze([runs])
    keys = {run_key(r) for r in ordinary}
    assert {run_key(r) for r in results} == keys  # a layer belongs to its checkpoint's run
    with pytest.raises(UsageError, match="calibrate-on"):
        analyze([runs], layers=True, calibrate_on="val")


def test_headless_layer_metrics_equal_the_oracle(runs: Path) -> None:
    """Every head-free key of every layer against the naive oracle on the same rows; the head
    keys null except at the head's input, where they match the oracle too."""
    means, y, noise = _base()
    weight = means - means.mean(axis=0)
    results = [r for r in analyze([runs / "ls"], layers=True) if r.epoch == 300]
    assert len(results) == len(LAYERS)
    by_layer = {r.layer: r for r in results}
    for rank, (layer, order) in enumerate(LAYERS):
        r = by_layer[layer]
        assert r.layer_order == order
        expected = classification_oracle(means[y] + noise * 0.25**rank, y, weight).metrics
        for key, value in expected.items():
            if layer != HEAD_LAYER and key in HEAD_KEYS:
                assert math.isnan(r.metrics[key]), key
            else:
                assert r.metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (layer, key)


# ---------------------------------------------------------------------------------------------
# profiles


def test_profiles_in_model_order_recover_the_decay(runs: Path) -> None:
    profiles = depth_profiles(analyze([runs], layers=True))
    assert [(p.run, p.epoch) for p in profiles] == [
        ("ce", 10),
        ("ce", 300),
        ("ls", 10),
        ("ls", 300),
    ]
    for p in profiles:
        assert p.layers == [name for name, _ in LAYERS]  # layer_order, not names
        q = 0.5 if p.run == "ce" else 0.25
        # l is the rank in model order (0..3), not layer_order (2, 5, 11, 20)
        assert p.fit.decay == pytest.approx(q**2, rel=1e-9)
        assert p.fit.r2 == pytest.approx(1.0, abs=1e-12)
        values = [r.metrics["separation_fuzziness"] for r in p.results]
        assert values[0] == pytest.approx(values[-1] / q ** (2 * (len(values) - 1)), rel=1e-9)
        assert p.warnings == []
    final = final_profiles(profiles)
    assert [(p.run, p.epoch) for p in final] == [("ce", 300), ("ls", 300)]
    label_profiles(final, {"ls": "label smoothing"})
    assert final[1].labels["label"] == "label smoothing"
    with pytest.raises(UsageError, match="no run named 'nope'; runs: ce, ls"):
        label_profiles(final, {"nope": "x"})


def test_a_profile_that_cannot_be_fitted_says_why(tmp_path: Path) -> None:
    means, y, noise = _base()
    attrs = {"run": "one", "epoch": 1, "split": "train", "checkpoint": "/c/e.pt"}
    folder = tmp_path / "one" / "e.pt.train.layers"
    write_store(
        folder / "only.h5",
        features=means[y] + noise,
        weight=None,
        labels=y,
        width=K,
        attrs={**attrs, "layer": "only", "layer_order": 0},
    )
    write_store(  # no noise at all: F = 0, log F undefined
        folder / "zero.h5",
        features=means[y],
        weight=None,
        labels=y,
        width=K,
        attrs={**attrs, "layer": "zero", "layer_order": 1},
    )
    (profile,) = depth_profiles(analyze([tmp_path], layers=True))
    assert profile.layers == ["only", "zero"]
    assert math.isnan(profile.fit.decay)
    assert "at layer zero (0.0)" in profile.fit.undefined["separation_decay"]
    record = profile.to_json()
    assert record["separation_decay"] is None and record["separation_r2"] is None


def test_regression_profiles_have_no_fit(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5))
    targets = x[:, :2] @ rng.normal(size=(2, 2))
    attrs = {"run": "reg", "epoch": 3, "split": "train", "checkpoint": "/c/e.pt"}
    folder = tmp_path / "reg" / "e.pt.train.layers"
    for order, name in enumerate(("a", "b")):
        write_store(
            folder / f"{name}.h5",
            features=x * (order + 1),
            weight=None if name == "a" else rng.normal(size=(2, 5)),
            targets=targets,
            width=2,
            attrs={**attrs, "layer": name, "layer_order": order},
        )
    (profile,) = depth_profiles(analyze([tmp_path], layers=True))
    assert profile.task == "regression"
    assert profile.fit.undefined == dict.fromkeys(
        ("separation_decay", "separation_r2"), REGRESSION_FIT
    )
    result = cli("report", tmp_path, "--by", "layer", "--width", "200", "-q")
    assert result.exit_code == 0, result.stderr
    assert "NRC1" in result.stdout and "NRC1c" in result.stdout and "EVR" in result.stdout
    assert "law of data separation" not in result.stdout


# ---------------------------------------------------------------------------------------------
# report --by layer


def test_report_by_layer_table(runs: Path) -> None:
    result = cli("report", runs, "--by", "layer", "--width", "160", "-q")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    # the final checkpoints only, by default
    assert "ce: epoch_300.pt, epoch 300 (4 layers)" in out
    assert "ls: epoch_300.pt, epoch 300 (4 layers)" in out
    assert "epoch_010" not in out
    rows = [line for line in out.splitlines() if line.startswith("│ ")]
    names = [line.split("│")[1].strip() for line in rows]
    assert names[:4] == [name for name, _ in LAYERS]
    stem = rows[0].split("│")
    assert stem[-2].strip() == stem[-3].strip() == stem[-4].strip() == "-"  # NC3, NC4, Acc
    assert rows[3].split("│")[-2].strip() != "-"  # the head's input has an accuracy
    assert "rho = 0.2500, R^2 = 1.0000" in out and "rho = 0.0625, R^2 = 1.0000" in out
    assert "law of data separation (He & Su 2023)" in out
    every = cli("report", runs, "--by", "layer", "--checkpoints", "all", "--width", "160", "-q")
    assert every.exit_code == 0 and "ce: epoch_010.pt, epoch 10 (4 layers)" in every.stdout


def test_report_by_layer_json_and_csv(runs: Path) -> None:
    result = cli("report", runs, "--by", "layer", "-f", "json", "-q")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [(p["run"], p["epoch"]) for p in doc["profiles"]] == [("ce", 300), ("ls", 300)]
    assert doc["profiles"][0]["separation_decay"] == pytest.approx(0.25, rel=1e-9)
    assert doc["profiles"][0]["separation_r2"] == pytest.approx(1.0, abs=1e-12)
    assert doc["profiles"][0]["layers"] == [name for name, _ in LAYERS]
    assert doc["profiles"][0]["checkpoint"] == "/ckpt/ce/epoch_300.pt"
    assert len(doc["results"]) == 2 * len(LAYERS)
    assert [r["layer"] for r in doc["results"][:4]] == [name for name, _ in LAYERS]
    assert [r["layer_order"] for r in doc["results"][:4]] == [order for _, order in LAYERS]
    assert doc["results"][0]["metrics"]["accuracy"] is None
    result = cli("report", runs, "--by", "layer", "-f", "csv", "-q", "-m", "nc1,ncc_accuracy")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 2 * len(LAYERS)
    assert set(rows[0]) >= {"layer", "layer_order", "nc1", "ncc_accuracy", "separation_decay"}
    assert "nc4" not in rows[0]
    assert float(rows[5]["separation_decay"]) == pytest.approx(0.0625, rel=1e-9)
    markdown = cli("report", runs, "--by", "layer", "-f", "markdown", "-q")
    assert markdown.exit_code == 0 and "| fc:input | 6 |" in markdown.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--baseline", "ce"), "--baseline"),
        (("--group-by", "label"), "--group-by label"),
        (("--gamma-trajectory",), "--gamma-trajectory"),
        (("--trajectory",), "--trajectory"),
        (("--nc-split", "train", "--eval-split", "test"), "--nc-split/--eval-split"),
        (("--calibrate-on", "val"), "--calibrate-on"),
    ],
)
def test_report_by_layer_refuses_the_other_views_options(
    runs: Path, args: tuple[str, ...], named: str
) -> None:
    result = cli("report", runs, "--by", "layer", *args)
    assert result.exit_code == 2
    assert result.stderr == (
        "ncinspect: error: --by layer shows each checkpoint's layers, not runs across epochs or "
        f"splits: {named} does not apply to it\n"
    )


def test_report_by_layer_without_layer_stores(runs: Path, tmp_path: Path) -> None:
    copy = tmp_path / "plain"
    shutil.copytree(runs, copy, ignore=shutil.ignore_patterns("*.layers"))
    result = cli("report", copy, "--by", "layer")
    assert result.exit_code == 2
    assert result.stderr == (
        f"ncinspect: error: --by layer: no layer store found in {copy}; write them with "
        "extract --layers\n"
    )
    only = cli("report", runs / "ce" / "epoch_300.pt.train.layers")
    assert only.exit_code == 1
    assert "but layer stores (extract --layers): see them with --by layer" in only.stderr
    wrong = cli("report", runs, "--checkpoints", "all")
    assert wrong.exit_code == 2
    assert "--checkpoints all applies to --by layer and --per-class only" in wrong.stderr


@pytest.mark.parametrize("on", ["host", "device"])
def test_headless_regression_layer_stats_only(tmp_path: Path, on: str) -> None:
    """A stats-only layer store of a regression layer without a head (host passes, or the device
    passes on CPU): the head-free keys as from its rows, mse and r2 null (nothing predicted)."""
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(60, 5)) @ rng.normal(size=(5, 5))).astype(np.float32)
    targets = x[:, :2].astype(np.float64) + 0.1 * rng.normal(size=(60, 2))
    src = ArraySource(
        path="layer.h5",
        task="regression",
        n=60,
        d=5,
        head=None,
        has_outputs=False,
        features=x,
        targets=targets,
        width_without_head=2,
    )
    options = AnalysisOptions()
    if on == "host":
        parts, attrs = gather_statistics(src, options)
    else:
        parts, attrs = devicestats.gather_statistics(src, on_device(src), DEVICE, options)
    path = tmp_path / "layer.h5"
    layer = {"run": "r", "epoch": 1, "split": "train", "layer": "body.0", "layer_order": 0}
    with StoreWriter(
        path, task="regression", d=5, width=2, attrs=layer, stats_only=True, headless=True
    ) as writer:
        writer.set_statistics(parts, 60, attrs)
    store = open_store(path)
    try:
        saved = analyze_source(store)
    finally:
        store.close()
    rows = analyze_source(src)
    assert saved.layer == "body.0" and saved.layer_order == 0
    for key in ("mse", "r2"):
        assert math.isnan(saved.metrics[key]) and math.isnan(rows.metrics[key]), key
    for key in ("nrc1", "nrc1_centered", "evr"):
        assert saved.metrics[key] == pytest.approx(rows.metrics[key], rel=1e-9), key
