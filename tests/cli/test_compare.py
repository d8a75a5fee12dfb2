"""`ncinspect compare`: matched comparisons of two runs as JSON and a table, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ncinspect.cli import app
from ncinspect.io.store.writer import write_store
from tests.helpers.cli import cli, runner


def test_compare_json_and_table(runs_dir: Path) -> None:
    res = runner.invoke(app, ["compare", str(runs_dir / "ce"), str(runs_dir / "ls"), "-f", "json"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["at"] == "nc1" and doc["runs"] == ["ce", "ls"]
    assert len(doc["levels"]) == 5
    for level in doc["levels"]:
        for key, diff in level["diff"].items():
            if diff is not None:
                assert diff == pytest.approx(level["b"][key] - level["a"][key])
    table = runner.invoke(app, ["compare", str(runs_dir / "ce"), str(runs_dir / "ls")])
    assert "ce vs ls at matched nc1" in table.stdout and "first epoch reaching" in table.stdout


def test_compare_disjoint_levels_error(runs_dir: Path) -> None:
    res = runner.invoke(
        app, ["compare", str(runs_dir / "ce"), str(runs_dir / "ls"), "--levels", "1e-9"]
    )
    assert res.exit_code == 0
    assert "n/a" in res.stdout and "not reached" in res.stdout


def test_compare_needs_one_run_each(runs_dir: Path) -> None:
    res = runner.invoke(app, ["compare", str(runs_dir), str(runs_dir / "ls")])
    assert res.exit_code == 2
    assert "expected one run, found 2 (ce, ls)" in res.stderr


def _seeded_splits(root: Path) -> Path:
    """seed0/ce and seed1/ce (one run name, two folders), each with test and train stores."""
    rng = np.random.default_rng(3)
    k, d, n = 4, 12, 30
    means = rng.normal(size=(k, d)) * 2
    y = np.repeat(np.arange(k), n)
    for seed, decay in ((0, 0.6), (1, 0.5)):
        for split in ("test", "train"):
            for i, epoch in enumerate((2, 10, 30)):
                x = means[y] + 2 * decay**i * rng.normal(size=(k * n, d))
                write_store(
                    root / f"seed{seed}" / "ce" / f"epoch_{epoch}.pt.{split}.h5",
                    features=x,
                    labels=y,
                    weight=means,
                    attrs={"run": "ce", "epoch": epoch, "split": split},
                )
    return root


def test_compare_split_option(tmp_path: Path) -> None:
    root = _seeded_splits(tmp_path)
    a, b = root / "seed0" / "ce", root / "seed1" / "ce"
    res = cli("compare", a, b, "-f", "json")
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        f"ncinspect: error: {a}: holds more than one split (test, train); choose one with --split"
    ]
    res = cli("compare", a, b, "--split", "val")
    assert res.stderr.strip().splitlines() == [
        f"ncinspect: error: {a}: no stores of split 'val'; its splits: test, train"
    ]
    res = cli("compare", a, b, "--split", "train", "-f", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["runs"] == ["seed0/ce", "seed1/ce"]
    epochs = doc["first_epoch_reaching"]["a"].values()
    assert set(epochs) <= {2, 10, 30, None}
    # With one split per run, that split is the default.
    only = tmp_path / "only"
    for split_dir in (a, b):
        dest = only / split_dir.relative_to(root)
        dest.mkdir(parents=True)
        for store in split_dir.glob("*.test.h5"):
            (dest / store.name).write_bytes(store.read_bytes())
    res = cli("compare", only / "seed0" / "ce", only / "seed1" / "ce", "-f", "json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["runs"] == ["seed0/ce", "seed1/ce"]


def test_report_seeds_and_splits(tmp_path: Path) -> None:
    root = _seeded_splits(tmp_path)
    res = cli("report", root, "--by", "run", "-f", "json", "-m", "nc1", "-q")
    assert res.exit_code == 0, res.stderr
    runs = json.loads(res.stdout)["runs"]
    assert [(r["run"], r["final"]["split"], r["epochs"]) for r in runs] == [
        ("seed0/ce[test]", "test", [2, 10, 30]),
        ("seed0/ce[train]", "train", [2, 10, 30]),
        ("seed1/ce[test]", "test", [2, 10, 30]),
        ("seed1/ce[train]", "train", [2, 10, 30]),
    ]
    res = cli("report", root, "--by", "checkpoint", "-f", "markdown", "-m", "nc1", "-q")
    assert "| run | checkpoint | split | epoch | N | NC1 |" in res.stdout
    rows = [ln.split(" | ")[:3] for ln in res.stdout.splitlines() if ln.startswith("| seed")]
    assert len(rows) == 12 and len({tuple(r) for r in rows}) == 12
    assert ["| seed1/ce", "epoch_30.pt.train.h5", "train"] in rows
    res = cli("report", root, "--by", "epoch", "-f", "csv", "-m", "nc1", "-q")
    header, *lines = res.stdout.splitlines()
    assert header == "run,task,split,epoch,source,nc1" and len(lines) == 12


def _regression_run(folder: Path, decay: float, seed: int) -> Path:
    """Epochs whose features approach a 2-D subspace (NRC1 falls) with a head on that subspace."""
    rng = np.random.default_rng(seed)
    n, d, t = 200, 8, 2
    basis = np.linalg.qr(rng.normal(size=(d, t)))[0]
    targets = rng.normal(size=(n, t))
    for i, epoch in enumerate((1, 5, 20)):
        x = targets @ basis.T + decay**i * rng.normal(size=(n, d))
        write_store(
            folder / f"epoch_{epoch}.pt.train.h5",
            features=x,
            targets=targets,
            weight=basis.T,
            attrs={"run": folder.name, "epoch": epoch, "split": "train"},
        )
    return folder


def test_compare_defaults_to_a_metric_of_the_runs_task(tmp_path: Path) -> None:
    a = _regression_run(tmp_path / "mse", 0.3, 0)
    b = _regression_run(tmp_path / "mse_wd", 0.2, 1)
    res = cli("compare", a, b, "-f", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["at"] == "nrc1"
    assert "nrc1" not in doc["levels"][0]["a"]  # the matched metric is not compared with itself
