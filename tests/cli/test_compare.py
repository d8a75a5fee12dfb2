"""`ncinspect compare`: matched comparisons of two runs as JSON and a table, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ncinspect.cli import app
from tests.helpers.cli import runner


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
