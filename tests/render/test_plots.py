"""Plots, headless: files written atomically and non-empty, one line per run, names in the SVG."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from ncinspect.api import analyze
from ncinspect.errors import OutputError, UsageError
from ncinspect.io.store.writer import write_store
from ncinspect.metrics.regression import nrc3_at
from ncinspect.metrics.results import Result
from ncinspect.render.plots import (
    build_gamma_figure,
    build_matched_figure,
    build_run_figure,
    plot_matched,
    plot_runs,
    run_label,
)
from ncinspect.runs import Run, compare_runs, group_runs


def _result(name: str, epoch: int | None, task: str, metrics: dict[str, float]) -> Result:
    return Result(
        source=f"/runs/{name}/e{epoch}.h5",
        task=task,
        n=10,
        d=4,
        k=3 if task == "classification" else None,
        t=None if task == "classification" else 2,
        metrics=metrics,
        info={},
        warnings=[],
        run=name,
        epoch=epoch,
    )


def _classification_run(name: str, scale: float, labels: dict | None = None) -> Run:
    results = []
    for e in (1, 2, 5, 10):
        nc1 = scale * 10.0 ** (1 - e / 2)  # spans 4.5 decades: log axis
        metrics = {
            "nc1": nc1,
            "nc2_etf_means": 0.5 + 0.1 * scale / e,  # narrow span: linear axis
            "nc2_etf_weights": 0.4 * scale / e,
            "nc3": 0.3 * scale / e,
            "nc4": math.nan if e == 1 else 0.1 * scale / e,
            "accuracy": 0.5 + 0.04 * e / scale,
        }
        results.append(_result(name, e, "classification", metrics))
    return Run(name, "classification", results, labels=dict(labels or {}), key=name)


def _regression_run(name: str, seed: int) -> Run:
    rng = np.random.default_rng(seed)
    results = []
    for e in (1, 3):
        weight = rng.normal(size=(2, 4))
        a = rng.normal(size=(2, 2))
        cov = a @ a.T + np.eye(2)
        metrics = {
            "nrc1": 0.5 / e,
            "nrc1_centered": 0.4 / e,
            "nrc2": 0.3 / e,
            "nrc2_centered": 0.2 / e,
            "nrc3": nrc3_at(weight, cov, 0.5),
            "nrc3_gamma": 0.5,
            "r2": 0.5 + 0.1 * e,
        }
        r = _result(name, e, "regression", metrics)
        r.extras = {"weight": weight, "target_cov": cov}
        results.append(r)
    return Run(name, "regression", results, key=name)


@pytest.fixture
def runs() -> list[Run]:
    return [
        _classification_run("ce_run", 1.0, {"loss": "ce"}),
        _classification_run("ls_run", 3.0, {"loss": "ce", "label_smoothing": 0.1}),
        _regression_run("reg_run", 0),
    ]


def _lines(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def _check_png(path: Path) -> None:
    assert path.stat().st_size > 10_000
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image.std() > 0  # not a blank canvas


def test_plot_runs_writes_every_figure(runs: list[Run], tmp_path: Path) -> None:
    out = tmp_path / "plots"
    written = plot_runs(runs, out)
    assert sorted(p.name for p in written) == [
        "classification_trajectories.png",
        "classification_trajectories.svg",
        "nrc3_gamma.png",
        "nrc3_gamma.svg",
        "regression_trajectories.png",
        "regression_trajectories.svg",
    ]
    assert sorted(out.iterdir()) == sorted(written)  # no temporary files left behind
    for path in written:
        if path.suffix == ".png":
            _check_png(path)
    svg = (out / "classification_trajectories.svg").read_text()
    assert "ce_run" in svg and "ls_run (ce, LS 0.1)" in svg and "reg_run" not in svg
    assert "reg_run" in (out / "regression_trajectories.svg").read_text()
    assert "reg_run" in (out / "nrc3_gamma.svg").read_text()


def test_run_figure_has_a_line_per_run_and_log_axes(runs: list[Run]) -> None:
    fig = build_run_figure(runs[:2])
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes][:2] == [
        "NC1 (lower = collapsed)",
        "ETFM (lower = collapsed)",
    ]
    for ax in axes:
        assert _lines(ax) == ["ce_run (ce)", "ls_run (ce, LS 0.1)"]
    assert axes[0].get_yscale() == "log"  # nc1 spans 4.5 decades
    assert axes[1].get_yscale() == "linear"  # nc2 within 0.51..0.8: under 1.5 decades
    x, y = axes[0].get_lines()[1].get_data()
    np.testing.assert_allclose(x, [1, 2, 5, 10])
    np.testing.assert_allclose(y, [3.0 * 10.0 ** (1 - e / 2) for e in (1, 2, 5, 10)])
    assert len(fig.legends) == 1

    reg = build_run_figure(runs[2:])
    assert [ax.get_title() for ax in reg.axes][4] == "NRC3 (lower = collapsed)"
    assert all(_lines(ax) == ["reg_run"] for ax in reg.axes)


def test_real_regression_stores_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for epoch in (1, 4):
        x = rng.normal(size=(60, 5))
        w = rng.normal(size=(2, 5))
        y = x @ w.T + 0.1 * rng.normal(size=(60, 2))
        attrs = {"run": "reg", "epoch": epoch, "loss": "mse", "weight_decay": 1e-3}
        write_store(
            tmp_path / "reg" / f"epoch_{epoch}.h5", features=x, weight=w, targets=y, attrs=attrs
        )
    (run,) = group_runs(analyze([tmp_path / "reg"]))
    assert run.task == "regression" and run.epochs == [1, 4]
    written = plot_runs([run], tmp_path / "out", formats=("png",))
    assert [p.name for p in written] == ["regression_trajectories.png", "nrc3_gamma.png"]
    fig = build_gamma_figure([run])
    assert fig is not None
    assert _lines(fig.axes[0])[0] == "reg (mse, WD 0.001)"


def test_epoch_axes_have_whole_number_ticks() -> None:
    """Epochs 1..4 would get ticks 1.0, 1.5, 2.0, ... by default."""
    run = _classification_run("r", 1.0)
    for i, res in enumerate(run.results):
        res.epoch = i + 1
    fig = build_run_figure([run], ["nc1"])
    fig.canvas.draw()
    (ax,) = fig.axes
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_unknown_epochs_plot_against_checkpoint_order() -> None:
    run = _classification_run("r", 1.0)
    for res in run.results:
        res.epoch = None
    fig = build_run_figure([run], ["nc1"])
    (ax,) = fig.axes
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [1, 2, 3, 4])
    assert ax.get_xlabel() == "checkpoint (epoch where known)"


def test_gamma_figure(runs: list[Run]) -> None:
    fig = build_gamma_figure(runs)
    assert fig is not None
    (ax,) = fig.axes
    curve, chosen = ax.get_lines()
    assert curve.get_label() == "reg_run"
    gammas, values = curve.get_data()
    final = runs[2].final
    lam_min = float(np.linalg.eigvalsh(final.extras["target_cov"]).min())
    assert gammas[0] == 0.0 and gammas[-1] == pytest.approx(lam_min)
    w, cov = final.extras["weight"], final.extras["target_cov"]
    assert values[10] == pytest.approx(nrc3_at(w, cov, float(gammas[10])))
    assert chosen.get_data()[0][0] == 0.5
    assert build_gamma_figure(runs[:2]) is None  # classification runs have no curve


def test_plot_matched(runs: list[Run], tmp_path: Path) -> None:
    a, b = runs[:2]
    comparison = compare_runs(a, b, "nc1", ["nc2_etf_means", "nc3"], n_levels=3)
    written = plot_matched(comparison, tmp_path, ("png", "svg"))
    assert [p.name for p in written] == ["matched_nc1.png", "matched_nc1.svg"]
    _check_png(written[0])
    svg = written[1].read_text()
    assert "ce_run" in svg and "ls_run" in svg

    fig = build_matched_figure(comparison)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for ax, key in zip(axes, comparison.metrics, strict=True):
        assert ax.get_xscale() == "log"
        labels = _lines(ax)
        assert labels[:4] == [
            "ce_run (ce)",
            "ce_run at matched NC1",
            "ls_run (ce, LS 0.1)",
            "ls_run at matched NC1",
        ]
        trajectory, matched = ax.get_lines()[0], ax.get_lines()[1]
        assert len(trajectory.get_xdata()) == 4
        np.testing.assert_allclose(matched.get_xdata(), [m.level for m in comparison.levels])
        np.testing.assert_allclose(matched.get_ydata(), [m.a[key] for m in comparison.levels])


def test_formats_and_output_errors(runs: list[Run], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="plot format"):
        plot_runs(runs[:1], tmp_path, formats=("jpg",))
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(OutputError, match="is a file, expected a directory"):
        plot_runs(runs[:1], target)
    assert plot_runs(runs[:1], tmp_path / "pdf", formats=("pdf",))[0].stat().st_size > 0


def test_missing_matplotlib_is_a_usage_error(
    runs: list[Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(UsageError) as err:
        build_run_figure(runs[:1])
    assert str(err.value) == "plotting needs the optional extra: pip install 'ncinspect[plot]'"


def test_run_label() -> None:
    run = Run("r", "classification", [], labels={"label": "my run", "weight_decay": 5e-4})
    assert run_label(run) == "r (my run, WD 0.0005)"
    assert run_label(Run("r", "classification", [])) == "r"


# ---------------------------------------------------------------------------------------------
# UFM sweeps: the plotted data are the closed forms (lines) and the solver's values (markers)


def test_ufm_classify_sweep_plots_the_closed_forms(tmp_path: Path) -> None:
    from ncinspect.render.plots import (
        UFM_CLASSIFY_PANELS,
        build_ufm_classify_figure,
        plot_ufm_sweep,
    )
    from ncinspect.ufm.classify import classify_closed_form
    from ncinspect.ufm.reports import sweep_classify

    alphas = [0.2, 0.0, 0.05, 0.1]  # unsorted on purpose: the x axis must come out sorted
    reports = sweep_classify(4, 5, 0.01, 0.01, alphas, d=None)
    fig = build_ufm_classify_figure(reports)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(UFM_CLASSIFY_PANELS)
    for ax, (key, _) in zip(axes, UFM_CLASSIFY_PANELS, strict=True):
        (line,) = ax.get_lines()  # closed form only: no solver markers
        x, y = line.get_data()
        np.testing.assert_allclose(x, sorted(alphas))
        expected = [getattr(classify_closed_form(4, 5, 0.01, 0.01, a), key) for a in x]
        np.testing.assert_allclose(y, expected, rtol=1e-15)
    margin = axes[0].get_lines()[0].get_ydata()
    np.testing.assert_allclose(margin[[0, 2]], [3.7310, 2.8967], atol=1e-4)  # spec values
    assert axes[0].texts[0].get_text() == "CE"

    solved = sweep_classify(3, 2, 0.02, 0.02, [0.0, 0.1], d=3)
    fig = build_ufm_classify_figure(solved)
    closed, markers = fig.axes[0].get_lines()
    assert markers.get_label() == "L-BFGS"
    np.testing.assert_allclose(markers.get_ydata(), closed.get_ydata(), rtol=1e-6)
    np.testing.assert_allclose(markers.get_ydata(), [r["numerical"]["margin"] for r in solved])

    written = plot_ufm_sweep(reports, tmp_path / "sweep.svg")
    assert written == tmp_path / "sweep.svg"
    assert "label smoothing alpha" in written.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.svg"]  # no partial file left
    _check_png(plot_ufm_sweep(reports, tmp_path / "sweep.png"))


def test_ufm_regress_sweep_plots_the_closed_forms(tmp_path: Path) -> None:
    from ncinspect.render.plots import build_ufm_regress_figure, plot_ufm_sweep
    from ncinspect.ufm.reports import sweep_regress

    sigma = np.diag([4.0, 1.0])
    pairs = [(0.1, 0.1), (0.2, 0.05), (1.0, 2.0), (3.0, 3.0)]  # c = 0.01, 0.01, 2, 9
    reports = sweep_regress(sigma, pairs, d=None)
    fig = build_ufm_regress_figure(reports)
    eig_ax, entry_ax = (ax for ax in fig.axes if ax.get_visible())
    curves = [line for line in eig_ax.get_lines() if line.get_label().startswith("eigenvalue")]
    first, second = (line.get_ydata() for line in curves)
    # Spec check values: diag(1.9, 0.9) at lambda = 0.1 and diag(3.8, 1.8) at (0.2, 0.05);
    # c = 2: only lambda = 4 survives, sqrt(1/2)(2 - sqrt 2); c = 9 > lambda_max: W = 0.
    np.testing.assert_allclose(first, [1.9, 3.8, math.sqrt(0.5) * (2 - math.sqrt(2)), 0.0])
    np.testing.assert_allclose(second, [0.9, 1.8, 0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(curves[0].get_xdata(), [0.01, 0.01, 2.0, 9.0])
    entries = {line.get_label(): line.get_ydata() for line in entry_ax.get_lines()}
    np.testing.assert_allclose(entries["(W W^T)[1,2]"], 0.0, atol=1e-15)
    verticals = [line.get_xdata()[0] for line in eig_ax.get_lines() if line.get_linestyle() == ":"]
    assert sorted(verticals) == [1.0, 4.0]

    solved = sweep_regress(sigma, [(0.1, 0.1), (0.5, 0.5)], d=4, n=40)
    fig = build_ufm_regress_figure(solved)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 3
    lines = axes[0].get_lines()
    closed, markers = lines[0], lines[1]
    np.testing.assert_allclose(markers.get_ydata(), closed.get_ydata(), rtol=1e-6)
    nrc = {line.get_label(): line.get_ydata() for line in axes[2].get_lines()}
    assert set(nrc) >= {"nrc1", "nrc2", "nrc3"} and max(nrc["nrc2"]) < 1e-6
    assert plot_ufm_sweep(reports, tmp_path / "reg.pdf").stat().st_size > 0


def test_ufm_plot_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ncinspect.render.plots import check_plot_file

    with pytest.raises(UsageError, match=r"--plot: found 'a.jpg'; expected a file name ending"):
        check_plot_file(tmp_path / "a.jpg")
    with pytest.raises(OutputError, match="directory does not exist"):
        check_plot_file(tmp_path / "missing" / "a.png")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(UsageError, match=r"pip install 'ncinspect\[plot\]'"):
        check_plot_file(tmp_path / "a.png")
