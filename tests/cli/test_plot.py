"""`ncinspect plot`: the figures of runs and of a matched comparison, written to a folder."""

from __future__ import annotations

from pathlib import Path

from ncinspect.cli import app
from tests.helpers.cli import runner


def test_plot_command(runs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    res = runner.invoke(
        app, ["plot", str(runs_dir), "--out", str(out), "--formats", "png", "--compare", "ce,ls"]
    )
    assert res.exit_code == 0, res.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["classification_trajectories.png", "matched_nc1.png"]
    assert all((out / n).stat().st_size > 10_000 for n in names)
