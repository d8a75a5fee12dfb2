"""The regression study's figures, read back from matplotlib's artists: the evr_j bars against a
numpy PCA of the stored features, nrc1_at_k, and the NRC3 gamma of each checkpoint against each
store analysed alone (its own search, before the run-level protocol holds the final gamma)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ncinspect.api import analyze
from ncinspect.io.store.writer import write_store
from ncinspect.render.regression_plots import (
    build_components_figure,
    build_gamma_epochs_figure,
    plot_regression_panels,
)
from ncinspect.runs import Run, group_runs

EPOCHS = (1, 5, 20)


def _features(rng: np.random.Generator, n: int, d: int, t: int, noise: float) -> tuple:
    targets = rng.normal(size=(n, t)) * np.arange(1, t + 1)  # distinct target variances
    basis = np.linalg.qr(rng.normal(size=(d, t)))[0]
    x = targets @ basis.T + noise * rng.normal(size=(n, d))
    return x, targets, basis


def _run_dir(folder: Path, d: int = 6, t: int = 2, seed: int = 0) -> dict[int, np.ndarray]:
    """Three epochs of one run whose features approach a T-dim subspace. Target j has standard
    deviation j, so Sigma^1/2 ~ diag(1..T); epoch i's head has W W^T = diag(1..T) - s_i I, whose
    NRC3 minimum lies inside [0, lambda_min] near gamma = s_i^2: a different gamma per epoch."""
    rng = np.random.default_rng(seed)
    features = {}
    for i, epoch in enumerate(EPOCHS):
        x, targets, basis = _features(rng, 300, d, t, 0.5**i)
        x = x.astype(np.float32)  # as the store keeps them
        s = (0.3, 0.5, 0.7)[i]
        weight = np.sqrt(np.arange(1, t + 1) - s)[:, None] * basis.T
        write_store(
            folder / f"epoch_{epoch}.pt.train.h5",
            features=x,
            targets=targets,
            weight=weight,
            attrs={"run": folder.name, "epoch": epoch, "split": "train"},
        )
        features[epoch] = x
    return features


def _pca_shares(x: np.ndarray) -> np.ndarray:
    """Each principal component's share of the centred feature variance, largest first."""
    x = x.astype(np.float64)
    centred = x - x.mean(axis=0)
    eig = np.linalg.eigvalsh(centred.T @ centred)[::-1]
    return np.clip(eig, 0, None) / eig.sum()


def _one_run(folder: Path, **kwargs: int) -> tuple[Run, dict[int, np.ndarray]]:
    features = _run_dir(folder, **kwargs)
    (run,) = group_runs(analyze([folder]))
    return run, features


def test_bars_are_each_components_share_and_sum_to_one_when_m_is_d(tmp_path: Path) -> None:
    run, features = _one_run(tmp_path / "mse", d=6, t=2)
    fig = build_components_figure([run])
    assert fig is not None
    bars, curve = fig.axes[0], fig.axes[1]
    heights = np.array([p.get_height() for p in bars.containers[0]])
    final = run.final.metrics
    assert heights.tolist() == [final[f"evr_{j}"] for j in range(1, 7)]
    np.testing.assert_allclose(heights, _pca_shares(features[EPOCHS[-1]]), rtol=1e-9, atol=1e-12)
    assert heights.sum() == pytest.approx(1.0, abs=1e-12)  # m = D: every component
    (line,) = [ln for ln in curve.lines if len(ln.get_xdata()) == 6]
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert list(line.get_ydata()) == [final[f"nrc1_at_{k}"] for k in range(1, 7)]
    marks = [ln.get_xdata()[0] for ln in bars.lines]  # axvline: the targets' count
    assert marks == [2.5]


def test_bars_stop_at_ten_components_and_sum_below_one(tmp_path: Path) -> None:
    run, features = _one_run(tmp_path / "wide", d=12, t=3, seed=1)
    fig = build_components_figure([run])
    assert fig is not None
    heights = np.array([p.get_height() for p in fig.axes[0].containers[0]])
    shares = _pca_shares(features[EPOCHS[-1]])
    assert heights.size == 10
    np.testing.assert_allclose(heights, shares[:10], rtol=1e-9, atol=1e-12)
    assert heights.sum() < 1.0 and heights.sum() == pytest.approx(1.0 - shares[10:].sum())


def test_variance_trajectory_panel_follows_evr_1_to_t(tmp_path: Path) -> None:
    run, features = _one_run(tmp_path / "mse", d=6, t=2)
    fig = build_components_figure([run])
    assert fig is not None
    panel = fig.axes[2]
    assert [ln.get_label() for ln in panel.lines] == ["PC1", "PC2"]
    for j, line in enumerate(panel.lines, start=1):
        assert list(line.get_xdata()) == list(EPOCHS)
        expected = [_pca_shares(features[e])[j - 1] for e in EPOCHS]
        np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-9)


def test_two_runs_share_the_bar_panel_side_by_side(tmp_path: Path) -> None:
    _run_dir(tmp_path / "a", d=6, t=2, seed=2)
    _run_dir(tmp_path / "b", d=6, t=3, seed=3)
    runs = group_runs(analyze([tmp_path]))
    fig = build_components_figure(runs)
    assert fig is not None
    first, second = fig.axes[0].containers
    assert [p.get_x() < q.get_x() for p, q in zip(first, second, strict=True)] == [True] * 6
    for container, run in zip((first, second), runs, strict=True):
        assert [p.get_height() for p in container] == [
            run.final.metrics[f"evr_{j}"] for j in range(1, 7)
        ]
    assert sorted(ln.get_xdata()[0] for ln in fig.axes[0].lines) == [2.5, 3.5]


def test_gamma_figure_draws_each_checkpoints_own_search(tmp_path: Path) -> None:
    run, _ = _one_run(tmp_path / "mse", d=6, t=2)
    alone = [analyze([tmp_path / "mse" / f"epoch_{e}.pt.train.h5"])[0] for e in EPOCHS]
    own = [r.metrics["nrc3_gamma"] for r in alone]  # searched, nothing held
    lam_min = [r.info["lambda_min"] for r in alone]
    fig = build_gamma_epochs_figure([run])
    assert fig is not None
    values, ratio = fig.axes[0], fig.axes[1]
    searched, lam_line, used = [ln for ln in values.lines if len(ln.get_xdata())]  # no keys
    np.testing.assert_allclose(searched.get_ydata(), own, rtol=1e-12)
    np.testing.assert_allclose(lam_line.get_ydata(), lam_min, rtol=1e-12)
    held = run.final.metrics["nrc3_gamma"]
    assert list(used.get_ydata()) == [held] * 3  # the run-level protocol's gamma
    assert own[0] != pytest.approx(held)  # so the two lines really differ
    expected = [g / lam for g, lam in zip(own, lam_min, strict=True)]
    np.testing.assert_allclose(ratio.lines[0].get_ydata(), expected, rtol=1e-12)
    assert list(searched.get_xdata()) == list(EPOCHS)


def test_no_regression_run_draws_nothing(tmp_path: Path) -> None:
    run, _ = _one_run(tmp_path / "mse")
    other = Run("c", "classification", run.results, key="c")
    assert build_components_figure([other]) is None
    assert build_gamma_epochs_figure([other]) is None
    assert plot_regression_panels([other], tmp_path / "out") == []


def test_plot_regression_panels_writes_both_files(tmp_path: Path) -> None:
    run, _ = _one_run(tmp_path / "mse")
    out = tmp_path / "figs"
    written = plot_regression_panels([run], out, formats=("png", "svg"))
    names = sorted(p.name for p in written)
    assert names == [
        "nrc3_gamma_epochs.png",
        "nrc3_gamma_epochs.svg",
        "regression_components.png",
        "regression_components.svg",
    ]
    assert all(p.stat().st_size > 0 for p in written)
    assert plot_regression_panels([run], tmp_path / "none", metrics=["nc1"]) == []
    assert not math.isnan(run.final.metrics["evr_1"])
