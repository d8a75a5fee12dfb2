"""`ncinspect report`: formats, exit codes, one-line errors, --by run / --by epoch."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from ncinspect.cli import app
from ncinspect.io.store.writer import write_store
from ncinspect.metrics.keys import keys_for
from tests.helpers.cli import cli, runner
from tests.helpers.synth import classification_set


@pytest.fixture
def store(tmp_path: Path) -> Path:
    x, y, w, b = classification_set(np.random.default_rng(0), 4, 6, 80)
    path = tmp_path / "runs" / "ce" / "epoch_5.pt.test.h5"
    write_store(
        path,
        features=x,
        labels=y,
        weight=w,
        bias=b,
        outputs=x @ w.T + b,
        attrs={"run": "ce", "checkpoint": "epoch_5.pt", "epoch": 5, "split": "test"},
    )
    return path


def test_json_shape(store: Path) -> None:
    res = cli("report", str(store), "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert set(doc) == {"ncinspect_version", "results"}
    (rec,) = doc["results"]
    assert set(rec) == {
        "source", "run", "checkpoint", "epoch", "task", "split", "layer", "layer_order",
        "n", "d", "k", "t", "metrics", "info", "warnings",
    }  # fmt: skip
    assert rec["layer"] is None and rec["layer_order"] is None  # an ordinary store
    assert (rec["run"], rec["checkpoint"], rec["epoch"], rec["split"]) == (
        "ce",
        "epoch_5.pt",
        5,
        "test",
    )
    assert (rec["task"], rec["n"], rec["d"], rec["k"], rec["t"]) == (
        "classification",
        80,
        6,
        4,
        None,
    )
    assert list(rec["metrics"]) == list(keys_for("classification"))
    assert rec["info"]["k_eff"] == 4


def test_json_nan_is_null(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "k2.npz"
    x = rng.normal(size=(30, 4))
    np.savez(path, features=x, labels=np.arange(30) % 2, weight=rng.normal(size=(2, 4)))
    res = cli("report", str(path), "-f", "json")
    assert res.exit_code == 0, res.stderr
    rec = json.loads(res.stdout)["results"][0]
    assert rec["metrics"]["nc2_equiangle_means"] is None
    assert any("nc2_equiangle_means is undefined" in w for w in rec["warnings"])
    assert "nc2_equiangle_means is undefined" in res.stderr


def test_csv_and_markdown(store: Path) -> None:
    res = cli("report", str(store), "-f", "csv", "--metrics", "nc1,nc4")
    assert res.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert rows[0]["run"] == "ce" and float(rows[0]["nc1"]) > 0
    assert list(rows[0])[-2:] == ["nc1", "nc4"]
    md = cli("report", str(store), "-f", "markdown").stdout
    assert "| run | checkpoint | epoch | N | NC1 |" in md
    assert "`nc1` (lower)" in md and "`accuracy` (higher)" in md


def test_table_default(store: Path) -> None:
    res = cli("report", str(store))
    assert res.exit_code == 0
    assert "classification (1 source)" in res.stdout
    assert "lower is more collapsed" in res.stdout


def test_output_file_written_atomically(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = cli("report", str(store), "-f", "json", "-o", str(out))
    assert res.exit_code == 0 and res.stdout == ""
    assert json.loads(out.read_text())["results"][0]["n"] == 80
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def _one_line_error(res, *fragments: str) -> None:
    assert res.exit_code == 1, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("ncinspect: error: ")
    assert "Traceback" not in res.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_error_missing_dataset(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, features=np.zeros((3, 2)), weight=np.zeros((2, 2)))
    _one_line_error(cli("report", str(path)), str(path), "missing array(s) 'labels or targets'")


def test_error_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, features=np.ones((5, 2)), labels=np.zeros(4, int), weight=np.ones((2, 2)))
    _one_line_error(
        cli("report", str(path)),
        str(path),
        "'labels' has shape (4,), expected (5,) to match 'features' of shape (5, 2)",
    )


def test_error_weight_width(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, features=np.ones((5, 2)), labels=np.zeros(5, int), weight=np.ones((2, 3)))
    _one_line_error(
        cli("report", str(path)),
        "'weight' has shape (2, 3), expected (2, 2) to match 'features' of shape (5, 2)",
    )


def test_error_label_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, features=np.ones((5, 2)), labels=np.arange(5), weight=np.ones((3, 2)))
    _one_line_error(
        cli("report", str(path)), "'labels' contains label 4, expected labels in [0, 2]"
    )


def test_error_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.h5"
    path.touch()
    _one_line_error(cli("report", str(path)), f"{path}: file is empty (0 bytes)")


def test_error_missing_path(tmp_path: Path) -> None:
    _one_line_error(cli("report", str(tmp_path / "nope.h5")), "no such file or directory")


def test_error_nonfinite_and_flag(tmp_path: Path) -> None:
    x, y, w, b = classification_set(np.random.default_rng(0), 3, 4, 30)
    x[[2, 5]] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, features=x, labels=y, weight=w, bias=b)
    _one_line_error(cli("report", str(path)), "2 row(s) with NaN or Inf", "--drop-nonfinite")
    res = cli("report", str(path), "-f", "json", "--drop-nonfinite")
    rec = json.loads(res.stdout)["results"][0]
    assert rec["n"] == 28 and rec["info"]["nonfinite_rows_dropped"] == 2


def test_usage_errors_exit_2(store: Path) -> None:
    res = cli("report", str(store), "--metrics", "nc9")
    assert res.exit_code == 2 and "unknown key(s) nc9" in res.stderr
    assert cli("report", str(store), "--format", "xml").exit_code == 2
    res = cli("report", str(store), "--ufm-lambdas", "1")
    assert res.exit_code == 2 and "expected two numbers" in res.stderr


def test_directory_skips_non_dumps(store: Path) -> None:
    np.savez(store.parent / "data.npz", x=np.zeros((3, 2)), y=np.zeros(3, int))
    res = cli("report", str(store.parent.parent), "-f", "json")
    assert res.exit_code == 0
    assert len(json.loads(res.stdout)["results"]) == 1
    assert "data.npz: skipped, not a feature store or dump" in res.stderr


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
    res = runner.invoke(app, ["report", str(runs_dir), "--by", "epoch", "--baseline", "ce"])
    assert res.exit_code == 2 and "--baseline needs --by run" in res.stderr
    res = runner.invoke(app, ["report", str(runs_dir), "--baseline", "ce", "-f", "json"])
    assert res.exit_code == 0, res.stderr
    assert [r["run"] for r in json.loads(res.stdout)["runs"]] == ["ce", "ls"]


def _long_run(root: Path, epochs: int = 15) -> Path:
    """One run of `epochs` checkpoints whose within-class spread shrinks by 0.8 an epoch."""
    rng = np.random.default_rng(5)
    k, d, n = 5, 10, 20
    means = rng.normal(size=(k, d)) * 3
    y = np.repeat(np.arange(k), n)
    for i in range(epochs):
        x = means[y] + 0.8**i * rng.normal(size=(k * n, d))
        write_store(
            root / "ce" / f"epoch_{i + 1}.pt.train.h5",
            features=x,
            labels=y,
            weight=means,
            attrs={"run": "ce", "epoch": i + 1, "split": "train"},
        )
    return root


def test_default_view_of_a_long_run_fits_a_screen(tmp_path: Path) -> None:
    root = _long_run(tmp_path)
    table = cli("report", root, "--width", "200", "-q")
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) < 40, table.stdout  # one row per checkpoint took 15 x 2 lines + UFM blocks
    assert "from the first to the final checkpoint" in table.stdout
    assert "--by checkpoint" in table.stdout and "1-15" in table.stdout
    every = cli("report", root, "--by", "checkpoint", "-f", "markdown", "-q")
    assert sum(ln.startswith("| ce |") for ln in every.stdout.splitlines()) == 15
    # scripts keep one record per store
    doc = json.loads(cli("report", root, "-f", "json", "-q").stdout)
    assert len(doc["results"]) == 15
    first, final = doc["results"][0]["metrics"], doc["results"][-1]["metrics"]
    md = cli("report", root, "-f", "markdown", "-m", "nc1", "-q").stdout
    row = next(ln for ln in md.splitlines() if ln.startswith("| ce | 15 | 1-15 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[3]) == pytest.approx(first["nc1"], rel=1e-3)
    assert float(cells[4]) == pytest.approx(final["nc1"], rel=1e-3)


def test_by_epoch_csv_is_in_epoch_order(runs_dir: Path) -> None:
    res = runner.invoke(app, ["report", str(runs_dir / "ce"), "--trajectory", "-f", "csv"])
    assert res.exit_code == 0
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("run,task,epoch,source,")
    assert [line.split(",")[2] for line in lines[1:]] == ["2", "10", "30"]


def test_tables_name_a_checkpoint_by_its_file_and_json_keeps_the_path(tmp_path: Path) -> None:
    """An extracted store records the checkpoint's path as given (runs/ce/epoch_7.pt); tables
    show its name, JSON the whole path."""
    from ncinspect.metrics.results import checkpoint_name

    assert checkpoint_name("runs/ce/epoch_7.pt") == "epoch_7.pt"
    assert checkpoint_name("out/bert/checkpoint-16/") == "checkpoint-16"
    assert checkpoint_name(r"C:\\runs\\a.pt") == "a.pt" and checkpoint_name("b.pt") == "b.pt"
    x, y, w, b = classification_set(np.random.default_rng(1), 4, 6, 80)
    for epoch in (3, 7):
        write_store(
            tmp_path / "s" / f"epoch_{epoch}.pt.test.h5",
            features=x, labels=y, weight=w, bias=b,
            attrs={"run": "ce", "checkpoint": f"far/away/runs/ce/epoch_{epoch}.pt",
                   "epoch": epoch, "split": "test"},
        )  # fmt: skip
    res = cli("report", tmp_path / "s", "--by", "epoch", "-m", "nc1", "--no-ufm", "-q")
    assert res.exit_code == 0, res.stderr
    assert "epoch_7.pt" in res.stdout and "far/away" not in res.stdout
    doc = json.loads(cli("report", tmp_path / "s", "-f", "json", "--no-ufm", "-q").stdout)
    assert {r["checkpoint"] for r in doc["results"]} == {
        "far/away/runs/ce/epoch_3.pt",
        "far/away/runs/ce/epoch_7.pt",
    }
