"""The run views of the CLI: --by run / --by epoch, compare and plot, plus the runs-table golden."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ncinspect.cli import app
from ncinspect.io.store.writer import write_store
from ncinspect.metrics.keys import CLASSIFICATION_KEYS
from ncinspect.metrics.results import Result
from ncinspect.render.tables import grids_text, runs_grids
from ncinspect.runs import group_runs, runs_table

runner = CliRunner()
GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs whose within-class noise shrinks over epochs, the 'ls' one faster."""
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    k, d, n = 4, 12, 30
    means = rng.normal(size=(k, d)) * 2
    y = np.repeat(np.arange(k), n)
    for run, alpha, decay in (("ce", 0.0, 0.6), ("ls", 0.1, 0.4)):
        for i, epoch in enumerate((2, 10, 30)):
            noise = 2 * decay**i
            x = means[y] + noise * rng.normal(size=(k * n, d))
            attrs = {"run": run, "epoch": epoch, "checkpoint": f"epoch_{epoch}.pt", "split": "test"}
            attrs.update(loss="cross_entropy", label_smoothing=alpha)
            write_store(
                root / run / f"epoch_{epoch}.pt.test.h5",
                features=x,
                labels=y,
                weight=means,
                outputs=x @ means.T,
                attrs=attrs,
            )
    return root


def test_by_run_json(runs_dir: Path) -> None:
    res = runner.invoke(app, ["report", str(runs_dir), "--by", "run", "-f", "json"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [r["run"] for r in doc["runs"]] == ["ce", "ls"]
    ls = doc["runs"][1]
    assert ls["epochs"] == [2, 10, 30] and ls["final"]["epoch"] == 30
    assert ls["labels"]["label_smoothing"] == 0.1 and ls["ratio_to_baseline"] is None


def test_by_run_baseline_ratio(runs_dir: Path) -> None:
    args = ["report", str(runs_dir), "--by", "run", "--baseline", "ce", "-f", "json", "-m", "nc1"]
    doc = json.loads(runner.invoke(app, args).stdout)
    ce, ls = doc["runs"]
    assert ce["ratio_to_baseline"]["nc1"] == pytest.approx(1.0)
    expected = ls["final"]["metrics"]["nc1"] / ce["final"]["metrics"]["nc1"]
    assert ls["ratio_to_baseline"]["nc1"] == pytest.approx(expected)


def test_baseline_needs_by_run(runs_dir: Path) -> None:
    res = runner.invoke(app, ["report", str(runs_dir), "--baseline", "ce"])
    assert res.exit_code == 2 and "--baseline needs --by run" in res.stderr


def test_by_epoch_csv_is_in_epoch_order(runs_dir: Path) -> None:
    res = runner.invoke(app, ["report", str(runs_dir / "ce"), "--trajectory", "-f", "csv"])
    assert res.exit_code == 0
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("run,task,epoch,source,")
    assert [line.split(",")[2] for line in lines[1:]] == ["2", "10", "30"]


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


def test_plot_command(runs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    res = runner.invoke(
        app, ["plot", str(runs_dir), "--out", str(out), "--formats", "png", "--compare", "ce,ls"]
    )
    assert res.exit_code == 0, res.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["classification_trajectories.png", "matched_nc1.png"]
    assert all((out / n).stat().st_size > 10_000 for n in names)


def _golden_runs_results() -> list[Result]:
    # Renderer inputs chosen by hand (not computed by ncinspect).
    out = []
    for run, alpha, scale in (("digits_ce", 0.0, 1.0), ("digits_ls", 0.1, 0.5)):
        for epoch in (10, 300):
            factor = scale if epoch == 300 else 4 * scale
            metrics = {k: factor * (i + 1) / 8 for i, k in enumerate(CLASSIFICATION_KEYS)}
            metrics["accuracy"] = 1 - factor / 100
            meta = {"provenance": {"loss": "cross_entropy", "label_smoothing": alpha}}
            out.append(
                Result(
                    source=f"features/{run}/epoch_{epoch}.pt.test.h5",
                    task="classification",
                    n=360,
                    d=64,
                    k=10,
                    t=None,
                    metrics=metrics,
                    info={},
                    warnings=[],
                    run=run,
                    checkpoint=f"epoch_{epoch}.pt",
                    epoch=epoch,
                    split="test",
                    extras={"meta": meta},
                )
            )
    return out


def test_golden_runs_table() -> None:
    runs = group_runs(_golden_runs_results())
    keys = ["nc1", "nc2_etf_means", "nc3", "accuracy"]
    text = grids_text(runs_grids(runs_table(runs, keys, baseline="digits_ce")), width=140)
    assert text == (GOLDEN / "runs_table.txt").read_text()
