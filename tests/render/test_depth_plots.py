"""Figures of collapse through depth (`render.depth_plots`), headless: a panel per metric, a line
per run (or per checkpoint, coloured by epoch, for one run), tick labels in model order, heat map
cells equal to the results' values with undefined cells masked, and `plot --by layer`'s files
and refusals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize

from ncinspect.depth import depth_profiles
from ncinspect.errors import UsageError
from ncinspect.io.store.writer import write_store
from ncinspect.render.depth_plots import (
    DEPTH_PLOT,
    build_depth_figure,
    build_depth_heatmap,
    heatmap_cells,
    layer_axis,
    plot_depth,
)
from tests.helpers.cli import cli
from tests.helpers.results import layer_result

# (name, layer_order): neither the names' natural order nor the orders themselves are the ranks
LAYERS = (("stem", 2), ("body.10", 5), ("body.9", 11), ("fc:input", 20))
MODEL_ORDER = [name for name, _ in LAYERS]
EPOCHS = (1, 4, 30)
RUNS = {"ce": 1.0, "ls": 3.0}


def _metrics(scale: float, epoch: int, rank: int) -> dict[str, float]:
    """nc1 spans about 4 decades through depth (a log axis); the others stay narrow."""
    return {
        "nc1": scale * 10.0 ** (-1.3 * rank) / epoch,
        "separation_fuzziness": 10 * scale * 10.0 ** (-1.3 * rank) / epoch,
        "nc1_cdnv": 0.5 + 0.01 * rank + 0.001 * epoch * scale,
        "nc2_etf_means": 0.9 - 0.05 * rank - 0.001 * epoch,
        "ncc_accuracy": 0.6 + 0.1 * rank - 0.001 * epoch / scale,
        "nc3": 0.2 * scale if rank == len(LAYERS) - 1 else math.nan,
    }


_result = layer_result


def _results(runs: dict[str, float] = RUNS, skip: tuple[str, int, str] | None = None):
    """Every run x epoch x layer, given in a scrambled order (reversed layers, epochs last
    first); `skip` = (run, epoch, layer) leaves that store out."""
    out = []
    for run, scale in runs.items():
        for epoch in reversed(EPOCHS):
            for rank, (layer, order) in reversed(list(enumerate(LAYERS))):
                if (run, epoch, layer) != skip:
                    out.append(_result(run, epoch, layer, order, _metrics(scale, epoch, rank)))
    return out


def _panels(fig) -> list:
    """The figure's metric panels (visible, not the colour bar)."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def _ticks(ax, axis: str = "x") -> list[str]:
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in ticks]


def test_layer_axis_is_model_order_not_name_order() -> None:
    profiles = depth_profiles(_results())
    assert layer_axis(profiles) == MODEL_ORDER
    assert all(p.layers == MODEL_ORDER for p in profiles)


def test_depth_figure_has_a_line_per_run_at_its_final_checkpoint() -> None:
    profiles = depth_profiles(_results())
    fig = build_depth_figure(profiles)
    panels = _panels(fig)
    assert [ax.get_title().split(" (")[0] for ax in panels] == [
        "NC1",
        "Fuzz",
        "CDNV",
        "ETFM",
        "NCCAcc",
    ]
    assert len(panels) == len(DEPTH_PLOT["classification"])
    for ax, key in zip(panels, DEPTH_PLOT["classification"], strict=True):
        assert _ticks(ax) == MODEL_ORDER
        lines = ax.get_lines()
        assert len(lines) == len(RUNS)
        for line, (run, scale) in zip(lines, RUNS.items(), strict=True):
            expected = [_metrics(scale, EPOCHS[-1], rank)[key] for rank in range(len(LAYERS))]
            np.testing.assert_array_equal(line.get_xdata(), np.arange(len(LAYERS)))
            np.testing.assert_allclose(line.get_ydata(), expected, rtol=0, atol=0)
            assert line.get_label().startswith(run) and line.get_label().endswith("epoch 30")
        # nc1 and F span decades: log; the others are narrow: linear
        assert ax.get_yscale() == ("log" if key in ("nc1", "separation_fuzziness") else "linear")
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_texts == ["ce, epoch 30", "ls, epoch 30"]


def test_depth_figure_of_one_run_has_a_line_per_checkpoint_coloured_by_epoch() -> None:
    profiles = depth_profiles(_results({"ce": 1.0}))
    fig = build_depth_figure(profiles, ["nc1_cdnv", "nc1"])
    panels = _panels(fig)
    assert len(panels) == 2
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1 and colorbars[0].get_ylabel() == "epoch"
    viridis, norm = colormaps["viridis"], Normalize(min(EPOCHS), max(EPOCHS))
    for ax, key in zip(panels, ["nc1_cdnv", "nc1"], strict=True):
        assert _ticks(ax) == MODEL_ORDER
        lines = ax.get_lines()
        assert len(lines) == len(EPOCHS)
        for line, epoch in zip(lines, EPOCHS, strict=True):  # in epoch order
            expected = [_metrics(1.0, epoch, rank)[key] for rank in range(len(LAYERS))]
            np.testing.assert_allclose(line.get_ydata(), expected, rtol=0, atol=0)
            np.testing.assert_allclose(line.get_color(), viridis(norm(epoch)), atol=1e-12)


def test_undefined_values_leave_gaps_not_zeros() -> None:
    """nc3 needs the head: only the head's input has it, the other layers are NaN."""
    fig = build_depth_figure(depth_profiles(_results()), ["nc3"])
    (ax,) = _panels(fig)
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), dtype=float)
        assert np.isnan(y[:-1]).all() and np.isfinite(y[-1])


def test_heatmap_cells_are_the_results_values_with_blanks_masked() -> None:
    missing = ("ls", 4, "body.9")
    profiles = depth_profiles(_results(skip=missing))
    fig = build_depth_heatmap(profiles, "nc1")
    panels = _panels(fig)
    assert len(panels) == len(RUNS)
    for ax, (run, scale) in zip(panels, RUNS.items(), strict=True):
        assert ax.get_title().startswith(run)
        assert _ticks(ax) == MODEL_ORDER
        assert _ticks(ax, "y") == [f"epoch {e}" for e in EPOCHS]
        (image,) = ax.get_images()
        cells = image.get_array()
        assert cells.shape == (len(EPOCHS), len(LAYERS))
        for i, epoch in enumerate(EPOCHS):
            for j in range(len(LAYERS)):
                if (run, epoch, MODEL_ORDER[j]) == missing:
                    assert cells.mask[i, j]  # blank: no store of that layer there
                else:
                    assert not np.ma.getmaskarray(cells)[i, j]
                    assert cells[i, j] == _metrics(scale, epoch, j)["nc1"]
        assert isinstance(image.norm, LogNorm)  # positive, spanning ~4 decades
    # one colour scale for both panels, over every finite cell
    images = [ax.get_images()[0] for ax in panels]
    values = [_metrics(s, e, j)["nc1"] for s in RUNS.values() for e in EPOCHS for j in range(4)]
    for image in images:
        assert image.norm.vmin == pytest.approx(min(values), rel=1e-12)
        assert image.norm.vmax == pytest.approx(max(values), rel=1e-12)


def test_heatmap_of_head_keys_and_linear_scale() -> None:
    profiles = depth_profiles(_results())
    layers, cells = heatmap_cells([p for p in profiles if p.run == "ce"], "nc3")
    assert layers == MODEL_ORDER
    assert np.isnan(cells[:, :-1]).all() and (cells[:, -1] == 0.2).all()
    fig = build_depth_heatmap(profiles, "nc1_cdnv")  # narrow range: a linear scale
    for ax in _panels(fig):
        assert not isinstance(ax.get_images()[0].norm, LogNorm)
    with pytest.raises(UsageError, match="nrc1 is not a classification key"):
        build_depth_heatmap(profiles, "nrc1")


def test_one_figure_holds_one_task() -> None:
    results = _results({"ce": 1.0})
    results[0].task = "regression"
    with pytest.raises(UsageError, match="one task"):
        build_depth_figure(depth_profiles(results))


def test_plot_depth_writes_both_figures(tmp_path: Path) -> None:
    profiles = depth_profiles(_results())
    written = plot_depth(profiles, tmp_path, ["nc1_cdnv", "nc1"], ["png", "svg"])
    assert [p.name for p in written] == [
        "classification_depth.png",
        "classification_depth.svg",
        "classification_depth_heatmap_nc1_cdnv.png",
        "classification_depth_heatmap_nc1_cdnv.svg",
    ]
    assert all(p.stat().st_size > 5_000 for p in written)
    with pytest.raises(UsageError, match="no key of the layer stores' task"):
        plot_depth(profiles, tmp_path, ["nrc1"])
    with pytest.raises(UsageError, match="extract --layers"):
        plot_depth([], tmp_path)


# ---------------------------------------------------------------------------------------------
# plot --by layer


def _stores(root: Path) -> Path:
    """Two runs of layer stores (and an ordinary store per checkpoint), two checkpoints each."""
    rng = np.random.default_rng(5)
    k, d, n = 3, 5, 8
    means = rng.normal(size=(k, d)) * 3
    y = np.repeat(np.arange(k), n)
    for run in ("ce", "ls"):
        for epoch in (10, 20):
            attrs = {"run": run, "epoch": epoch, "split": "train"}
            attrs["checkpoint"] = f"/ckpt/{run}/epoch_{epoch}.pt"
            name = f"epoch_{epoch}.pt.train"
            x = means[y] + rng.normal(size=(k * n, d))
            write_store(root / run / f"{name}.h5", features=x, weight=means, labels=y, attrs=attrs)
            for rank, (layer, order) in enumerate(LAYERS):
                head = rank == len(LAYERS) - 1
                write_store(
                    root / run / f"{name}.layers" / f"{layer}.h5",
                    features=means[y] + rng.normal(size=(k * n, d)) / (rank + 1),
                    weight=means if head else None,
                    labels=y,
                    width=k,
                    attrs={**attrs, "layer": layer, "layer_order": order},
                )
    return root


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _stores(tmp_path_factory.mktemp("layers"))


def test_plot_by_layer_writes_the_files_it_names(stores: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    res = cli("plot", stores, "--by", "layer", "--out", out, "--formats", "png")
    assert res.exit_code == 0, res.stderr
    names = ["classification_depth.png", "classification_depth_heatmap_nc1.png"]
    assert res.stdout.splitlines() == [str(out / n) for n in names]
    assert sorted(p.name for p in out.iterdir()) == names


def test_plot_by_layer_with_no_layer_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 4)
    x, w = rng.normal(size=(12, 4)), rng.normal(size=(3, 4))
    write_store(tmp_path / "r" / "e1.h5", features=x, weight=w, labels=y, attrs={"run": "r"})
    res = cli("plot", tmp_path / "r", "--by", "layer", "--out", tmp_path / "p")
    assert res.exit_code == 2
    assert res.stderr == (
        f"ncinspect: error: --by layer: no layer store found in {tmp_path / 'r'}; write them "
        "with extract --layers\n"
    )
    assert not (tmp_path / "p").exists()


def test_plot_by_layer_refusals(stores: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    res = cli("plot", stores, "--by", "layer", "--out", out, "-m", "nc1,bogus")
    assert res.exit_code == 2
    assert res.stderr.startswith("ncinspect: error: --metrics: unknown key(s) bogus; known keys:")
    res = cli("plot", stores, "--by", "layer", "--out", out, "-m", "nrc1")
    assert res.exit_code == 2
    assert res.stderr.startswith(
        "ncinspect: error: --metrics nrc1: no key of the layer stores' task (classification)"
    )
    res = cli("plot", stores, "--by", "layer", "--out", out, "--compare", "ce,ls")
    assert res.exit_code == 2
    assert res.stderr == (
        "ncinspect: error: --by layer draws each checkpoint's layers, not runs across epochs "
        "or splits: --compare does not apply to it\n"
    )
    assert not out.exists()


def test_plot_of_layer_stores_alone_points_at_by_layer(stores: Path, tmp_path: Path) -> None:
    folder = stores / "ce" / "epoch_20.pt.train.layers"
    res = cli("plot", folder, "--out", tmp_path / "p")
    assert res.exit_code == 2
    assert res.stderr == (
        f"ncinspect: error: no feature store or dump found in {folder} but layer stores "
        "(extract --layers): plot them with --by layer\n"
    )


def test_regression_layers_default_to_the_head_free_keys() -> None:
    results = []
    for rank, (layer, order) in enumerate(LAYERS):
        r = _result("reg", 5, layer, order, {"nrc1": 0.5 / (rank + 1), "evr": 0.2 * rank})
        r.task, r.k, r.t = "regression", None, 2
        results.append(r)
    fig = build_depth_figure(depth_profiles(results))
    panels = _panels(fig)
    assert [ax.get_title().split(" (")[0] for ax in panels] == ["NRC1", "NRC1c", "EVR"]
    np.testing.assert_allclose(
        panels[0].get_lines()[0].get_ydata(), [0.5 / (r + 1) for r in range(4)], rtol=0, atol=0
    )
    assert np.isnan(panels[1].get_lines()[0].get_ydata()).all()  # not given: a gap
    fig = build_depth_heatmap(depth_profiles(results), "nrc1")
    assert _ticks(_panels(fig)[0]) == MODEL_ORDER
