"""`report --gamma-trajectory` (each regression checkpoint's searched NRC3 gamma, lambda_min,
their ratio and the gamma used) as a table, JSON and CSV, its errors, and the regression panels
`plot` draws by default."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from ncinspect.api import analyze
from ncinspect.errors import UsageError
from ncinspect.io.store.writer import write_store
from tests.helpers.cli import cli
from tests.render.test_regression_plots import EPOCHS, _run_dir


def _alone(folder: Path) -> list[dict]:
    """Each store analysed on its own: its own gamma search, no run-level hold."""
    out = []
    for e in EPOCHS:
        (r,) = analyze([folder / f"epoch_{e}.pt.train.h5"])
        out.append({"gamma": r.metrics["nrc3_gamma"], "lambda_min": r.info["lambda_min"]})
    return out


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    _run_dir(tmp_path / "mse", d=6, t=2)
    return tmp_path / "mse"


def test_json_holds_each_checkpoints_own_search_and_the_held_gamma(run_dir: Path) -> None:
    res = cli("report", run_dir, "--gamma-trajectory", "-f", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    (run,) = doc["runs"]
    assert run["run"] == "mse" and run["task"] == "regression"
    rows = run["gamma_trajectory"]
    assert [row["epoch"] for row in rows] == list(EPOCHS)
    alone = _alone(run_dir)
    final_gamma = alone[-1]["gamma"]
    for row, own in zip(rows, alone, strict=True):
        assert row["gamma_searched"] == pytest.approx(own["gamma"], rel=1e-12)
        assert row["lambda_min"] == pytest.approx(own["lambda_min"], rel=1e-12)
        assert row["gamma_ratio"] == pytest.approx(own["gamma"] / own["lambda_min"], rel=1e-12)
        assert row["gamma_used"] == pytest.approx(final_gamma, rel=1e-12)
    assert [row["gamma_source"] for row in rows] == ["final_checkpoint"] * 2 + ["searched"]
    assert rows[0]["gamma_searched"] != pytest.approx(rows[0]["gamma_used"])


def test_csv_has_a_row_per_checkpoint(run_dir: Path) -> None:
    res = cli("report", run_dir, "--gamma-trajectory", "-f", "csv")
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert list(rows[0]) == [
        "run",
        "epoch",
        "source",
        "gamma_searched",
        "lambda_min",
        "gamma_ratio",
        "gamma_used",
        "gamma_source",
    ]
    assert [int(row["epoch"]) for row in rows] == list(EPOCHS)
    for row, own in zip(rows, _alone(run_dir), strict=True):
        assert float(row["gamma_searched"]) == pytest.approx(own["gamma"], rel=1e-12)
        ratio = own["gamma"] / own["lambda_min"]
        assert float(row["gamma_ratio"]) == pytest.approx(ratio, rel=1e-12)


def test_table_has_one_grid_per_run(tmp_path: Path) -> None:
    _run_dir(tmp_path / "a", seed=1)
    _run_dir(tmp_path / "b", seed=2)
    res = cli("report", tmp_path, "--gamma-trajectory", "--width", "200")
    assert res.exit_code == 0, res.stderr
    for name in ("a", "b"):
        assert f"{name}: NRC3 gamma by epoch" in res.stdout
    for header in ("gamma searched", "lambda_min", "ratio", "gamma used"):
        assert header in res.stdout
    md = cli("report", tmp_path, "--gamma-trajectory", "-f", "markdown")
    assert md.exit_code == 0, md.stderr
    lines = [ln for ln in md.stdout.splitlines() if ln.startswith("| ") and ln[2:3].isdigit()]
    assert len(lines) == 2 * len(EPOCHS)


def _one_error_line(res) -> str:
    assert res.exit_code == UsageError.exit_code, (res.exit_code, res.stderr)
    assert "Traceback" not in res.stderr
    (line,) = res.stderr.strip().splitlines()
    return line


def test_classification_only_is_one_line_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_store(
        tmp_path / "c.h5",
        features=rng.normal(size=(30, 4)),
        labels=np.arange(30) % 3,
        weight=rng.normal(size=(3, 4)),
    )
    line = _one_error_line(cli("report", tmp_path, "--gamma-trajectory", "-q"))
    assert "--gamma-trajectory: no regression store found" in line


def test_other_views_are_refused(run_dir: Path) -> None:
    line = _one_error_line(cli("report", run_dir, "--gamma-trajectory", "--by", "run"))
    assert "found --by run" in line
    line = _one_error_line(cli("report", run_dir, "--gamma-trajectory", "--baseline", "mse"))
    assert "a view of its own" in line


def test_plot_draws_the_regression_panels_by_default(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    res = cli("plot", run_dir, "--out", out, "--formats", "png")
    assert res.exit_code == 0, res.stderr
    names = {Path(line).name for line in res.stdout.split()}
    assert {"regression_components.png", "nrc3_gamma_epochs.png"} <= names
    assert (out / "regression_components.png").stat().st_size > 0
