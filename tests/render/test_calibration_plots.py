"""Reliability diagrams (`render.calibration_plots`, `plot --reliability`): the bars and points
of each panel against a naive per-bin accuracy and mean confidence computed here, before (T = 1)
and after scaling (the fitted temperature), the files written, and the error without logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ncinspect.api import analyze
from ncinspect.errors import UsageError
from ncinspect.io.store.writer import write_store
from ncinspect.render.calibration_plots import NO_BINS, build_reliability_figure
from ncinspect.runs import group_runs
from tests.helpers.cli import cli
from tests.helpers.oracle_calibration import in_bin, naive_probabilities, naive_top

N, D, K, M = 300, 5, 4, 10


def _logits(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 logits overconfident by about 3, labels drawn from the calibrated softmax."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, D)) @ rng.normal(size=(K, D)).T
    p = naive_probabilities(z)
    y = np.minimum((np.cumsum(p, axis=1) < rng.random(N)[:, None]).sum(axis=1), K - 1)
    return (3.0 * z).astype(np.float32), y


def _run(root: Path, name: str, seed: int, outputs: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Run `name`, epochs 1 and 2 (the final one's logits returned as float64, with labels)."""
    for epoch in (1, 2):
        z, y = _logits(seed + epoch)
        write_store(
            root / name / f"epoch_{epoch}.pt.test.h5",
            features=np.random.default_rng(epoch).normal(size=(N, D)),
            weight=np.random.default_rng(seed).normal(size=(K, D)),
            labels=y,
            outputs=z if outputs else None,
            attrs={"run": name, "epoch": epoch, "split": "test"},
        )
    return z.astype(np.float64), y


def naive_reliability(
    z: np.ndarray, y: np.ndarray, temperature: float
) -> tuple[list[float], list[float], list[float]]:
    """(left edges, mean confidence, accuracy) of the non-empty equal-width bins."""
    conf, correct = naive_top(naive_probabilities(z, temperature), y)
    lefts, means, accuracies = [], [], []
    for j in range(M):
        members = [(c, ok) for c, ok in zip(conf, correct, strict=True) if in_bin(c, j, M)]
        if members:
            lefts.append(j / M)
            means.append(sum(c for c, _ in members) / len(members))
            accuracies.append(sum(ok for _, ok in members) / len(members))
    return lefts, means, accuracies


def _drawn(ax) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bar left edges, bar heights, point x, point y) of one panel."""
    bars = ax.patches
    points = ax.lines[0]
    return (
        np.array([b.get_x() for b in bars]),
        np.array([b.get_height() for b in bars]),
        np.asarray(points.get_xdata(), dtype=float),
        np.asarray(points.get_ydata(), dtype=float),
    )


def test_panels_equal_the_naive_bins_before_and_after_scaling(tmp_path: Path) -> None:
    z_a, y_a = _run(tmp_path, "a", 0)
    z_b, y_b = _run(tmp_path, "b", 10)
    runs = group_runs(analyze(tmp_path, ece_bins=M))
    fig = build_reliability_figure(runs)
    assert len(fig.axes) == 4  # a row per run, before | after
    for row, run, (z, y) in zip((0, 1), runs, ((z_a, y_a), (z_b, y_b)), strict=True):
        temperature = run.final.metrics["temperature"]
        assert 1.5 < temperature < 6  # overconfident logits: a real change
        before, after = fig.axes[2 * row], fig.axes[2 * row + 1]
        for ax, t in ((before, 1.0), (after, temperature)):
            lefts, means, accuracies = naive_reliability(z, y, t)
            bar_x, heights, point_x, point_y = _drawn(ax)
            np.testing.assert_allclose(bar_x, lefts, atol=1e-12)
            np.testing.assert_allclose(heights, accuracies, atol=1e-12)
            np.testing.assert_allclose(point_x, means, atol=1e-12)
            np.testing.assert_allclose(point_y, accuracies, atol=1e-12)
        assert not np.array_equal(_drawn(before)[2], _drawn(after)[2])
        labels = [t.get_text() for t in before.get_legend().get_texts()]
        assert f"accuracy per bin (ece {run.final.metrics['ece']:.4f})" in labels
        labels = [t.get_text() for t in after.get_legend().get_texts()]
        assert f"accuracy per bin (ece_ts {run.final.metrics['ece_ts']:.4f})" in labels


def test_plot_reliability_writes_the_figure(tmp_path: Path) -> None:
    _run(tmp_path / "stores", "a", 0)
    out = tmp_path / "plots"
    res = cli("plot", tmp_path / "stores", "--reliability", "--out", out, "--formats", "png,svg")
    assert res.exit_code == 0, res.stderr
    for fmt in ("png", "svg"):
        path = out / f"reliability.{fmt}"
        assert path.stat().st_size > 0 and str(path) in res.stdout
    assert "Reliability of the final checkpoints" in (out / "reliability.svg").read_text()


def test_no_logits_is_one_usage_error(tmp_path: Path) -> None:
    _run(tmp_path, "a", 0, outputs=False)
    with pytest.raises(UsageError) as caught:
        build_reliability_figure(group_runs(analyze(tmp_path)))
    assert caught.value.message == NO_BINS
    res = cli("plot", tmp_path, "--reliability", "--out", tmp_path / "plots")
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [f"ncinspect: error: {NO_BINS}"]


def test_after_panel_uses_the_temperature_of_calibrate_on(tmp_path: Path) -> None:
    z, y = _logits(0)
    for split, logits in (("train", z), ("test", z * np.float32(2))):
        write_store(
            tmp_path / "a" / f"epoch_1.pt.{split}.h5",
            features=np.random.default_rng(1).normal(size=(N, D)),
            weight=np.random.default_rng(2).normal(size=(K, D)),
            labels=y,
            outputs=logits,
            attrs={"run": "a", "epoch": 1, "split": split},
        )
    runs = group_runs(analyze(tmp_path, ece_bins=M, calibrate_on="train"))
    (test_run,) = [r for r in runs if r.split == "test"]
    (train_run,) = [r for r in runs if r.split == "train"]
    temperature = train_run.final.metrics["temperature"]
    assert test_run.final.metrics["temperature"] == temperature
    fig = build_reliability_figure([test_run])
    lefts, means, accuracies = naive_reliability(z.astype(np.float64) * 2.0, y, temperature)
    bar_x, heights, point_x, _ = _drawn(fig.axes[1])
    np.testing.assert_allclose(bar_x, lefts, atol=1e-12)
    np.testing.assert_allclose(heights, accuracies, atol=1e-12)
    np.testing.assert_allclose(point_x, means, atol=1e-12)
    title = fig.axes[1].get_title().replace("\n", " ")
    assert f"fitted on train ({tmp_path / 'a' / 'epoch_1.pt.train.h5'})" in title
