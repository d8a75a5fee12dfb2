"""Runs that differ only by seed, grouped (`ncinspect.seeds`, `report --group-by label`): the
mean and sample standard deviation of each metric per epoch, against numpy over the runs'
separately computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ncinspect.api import analyze
from ncinspect.errors import UsageError
from ncinspect.io.store.writer import write_store
from ncinspect.runs import group_runs
from ncinspect.seeds import group_seeds
from tests.helpers.cli import cli

EPOCHS = (1, 5, 10)


def _runs(root: Path, missing_epoch: bool = False) -> Path:
    """ce and ls runs under three seeds each; the seed is in each run's run.json."""
    rng = np.random.default_rng(0)
    k, d, n = 4, 8, 25
    y = np.repeat(np.arange(k), n)
    for name, ls in (("ce", 0.0), ("ls", 0.1)):
        for seed in (0, 1, 2):
            folder = root / f"{name}_s{seed}"
            folder.mkdir(parents=True)
            config = {"loss": "cross_entropy", "label_smoothing": ls, "seed": seed, "lr": 0.1}
            (folder / "run.json").write_text(json.dumps(config))
            means = rng.normal(size=(k, d)) * 3
            for i, epoch in enumerate(EPOCHS):
                if missing_epoch and seed == 2 and epoch == 5:
                    continue
                x = means[y] + (0.7 if ls == 0 else 0.5) ** i * rng.normal(size=(k * n, d))
                write_store(
                    folder / f"epoch_{epoch}.pt.train.h5",
                    features=x,
                    labels=y,
                    weight=means,
                    attrs={"run": folder.name, "epoch": epoch, "split": "train"},
                )
    return root


def test_groups_average_each_epoch_over_seeds(tmp_path: Path) -> None:
    root = _runs(tmp_path, missing_epoch=True)
    results = analyze(root)
    groups = group_seeds(group_runs(results), ["nc1", "nc3"])
    assert [g.name for g in groups] == ["cross_entropy, LS 0", "cross_entropy, LS 0.1"]
    for group, prefix in zip(groups, ("ce", "ls"), strict=True):
        assert [run.name for run in group.runs] == [f"{prefix}_s{s}" for s in range(3)]
        assert "seed" not in group.labels and group.labels["lr"] == 0.1
        for point in group.points:
            values = [
                r.metrics["nc1"]
                for r in results
                if r.run.startswith(prefix) and r.epoch == point.epoch
            ]
            assert point.n_runs == len(values) == (2 if point.epoch == 5 else 3)
            assert point.mean["nc1"] == pytest.approx(np.mean(values), rel=1e-12)
            assert point.std["nc1"] == pytest.approx(np.std(values, ddof=1), rel=1e-9)
        finals = [r.metrics["nc3"] for r in results if r.run.startswith(prefix) and r.epoch == 10]
        assert group.final.mean["nc3"] == pytest.approx(np.mean(finals), rel=1e-12)


def test_a_single_run_has_no_spread_and_unlabelled_runs_are_refused(tmp_path: Path) -> None:
    root = _runs(tmp_path)
    runs = [run for run in group_runs(analyze(root)) if run.name == "ce_s0"]
    (group,) = group_seeds(runs, ["nc1"])
    assert group.final.std["nc1"] is None and group.final.n_runs == 1
    runs[0].labels = {"seed": 0}
    with pytest.raises(UsageError, match="states no hyper-parameters to group by"):
        group_seeds(runs, ["nc1"])


def test_report_group_by_label(tmp_path: Path) -> None:
    root = _runs(tmp_path)
    res = cli("report", root, "--group-by", "label", "-m", "nc1", "-f", "json", "--no-ufm")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)["groups"]
    assert [g["runs"] for g in doc] == [["ce_s0", "ce_s1", "ce_s2"], ["ls_s0", "ls_s1", "ls_s2"]]
    assert [p["epoch"] for p in doc[0]["trajectory"]] == list(EPOCHS)
    table = cli("report", root, "--group-by", "label", "-m", "nc1", "--no-ufm", "-f", "markdown")
    assert "| cross_entropy, LS 0.1 | 3 | 10 |" in table.stdout and " ± " in table.stdout
    res = cli("report", root, "--group-by", "label", "--by", "checkpoint")
    assert res.exit_code == 2 and "--group-by label needs --by run or --by epoch" in res.stderr
    csv_text = cli("report", root, "--group-by", "label", "-m", "nc1", "-f", "csv").stdout
    assert csv_text.splitlines()[0] == "group,task,split,epoch,n_runs,nc1_mean,nc1_std"
    assert len(csv_text.splitlines()) == 1 + 2 * len(EPOCHS)


def test_group_figure_draws_the_mean_in_a_band_of_one_std(tmp_path: Path) -> None:
    from matplotlib.collections import PolyCollection

    from ncinspect.render.plots import build_group_figure

    groups = group_seeds(group_runs(analyze(_runs(tmp_path))), ["nc1"])
    fig = build_group_figure(groups, ["nc1"])
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("cross_entropy")]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(lines) == len(bands) == 2
    for group, line, band in zip(groups, lines, bands, strict=True):
        mean = [p.mean["nc1"] for p in group.points]
        std = [p.std["nc1"] for p in group.points]
        np.testing.assert_allclose(line.get_ydata(), mean)
        ys = band.get_paths()[0].vertices[:, 1]
        assert ys.max() == pytest.approx(max(m + s for m, s in zip(mean, std, strict=True)))
        assert ys.min() == pytest.approx(min(m - s for m, s in zip(mean, std, strict=True)))
