"""The regression study's figures: principal components and the NRC3 gamma across epochs.

Owns `build_components_figure` (at each regression run's final checkpoint: the explained variance
of each principal component, evr_1..evr_m as bars with the T targets' count marked, and nrc1_at_k
against k; across epochs, each run's evr_1..evr_T) and `build_gamma_epochs_figure` (each
checkpoint's searched NRC3 gamma, lambda_min, the gamma used, and gamma / lambda_min against
epoch), and `plot_regression_panels`, which writes both. Draws with `ncinspect.render.plots`'
helpers (its Agg `Figure`, panel grid, legend and atomic `save_figure`), so matplotlib stays
behind that module. Never computes a metric: every value is a `Result`'s key or info
(`ncinspect.render.runviews.gamma_record`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ncinspect.metrics.keys import PCA_COMPONENTS, keys_for
from ncinspect.render.plots import (
    _DPI,
    _figure,
    _legend,
    _panel_grid,
    _size,
    _x,
    run_label,
    save_figure,
    wants_log,
)
from ncinspect.render.runviews import gamma_record

if TYPE_CHECKING:
    from ncinspect.metrics.results import Result
    from ncinspect.render.plots import Axes, Figure  # matplotlib's types, named where it lives
    from ncinspect.runs import Run

COMPONENTS_STEM = "regression_components"
GAMMA_EPOCHS_STEM = "nrc3_gamma_epochs"
_BAR_SPAN = 0.8  # the width a component's bars share between the runs


def components(result: Result) -> int:
    """m = min(D, PCA_COMPONENTS): the principal components whose evr_j / nrc1_at_k exist."""
    return min(result.d, PCA_COMPONENTS)


def _series(result: Result, prefix: str) -> np.ndarray:
    keys = [f"{prefix}_{j}" for j in range(1, components(result) + 1)]
    return np.array([result.metrics.get(k, math.nan) for k in keys], dtype=float)


def _with_components(runs: Sequence[Run]) -> list[Run]:
    return [
        run
        for run in runs
        if run.task == "regression" and np.isfinite(_series(run.final, "evr")).any()
    ]


def build_components_figure(runs: Sequence[Run]) -> Figure | None:
    """At each regression run's final checkpoint: evr_j per component (bars, one colour per run;
    a dashed line after component T, the targets' count) and nrc1_at_k against k; then, for each
    run with several checkpoints, evr_1..evr_T against epoch. None when no run has evr_j."""
    chosen = _with_components(runs)
    if not chosen:
        return None
    several = [run for run in chosen if len(run.results) > 1]
    n_panels = 2 + len(several)
    fig = _figure(figsize=_size(n_panels), dpi=_DPI, layout="constrained")
    axes = _panel_grid(fig, n_panels)
    _variance_bars(axes[0], chosen)
    _nrc1_curve(axes[1], chosen)
    for ax, run in zip(axes[2:], several, strict=True):
        _variance_trajectory(ax, run)
    fig.suptitle("regression runs: principal components of the features")
    _legend(fig, axes[:2])
    return fig


def _variance_bars(ax: Axes, runs: Sequence[Run]) -> None:
    width = _BAR_SPAN / len(runs)
    for i, run in enumerate(runs):
        shares = _series(run.final, "evr")
        k = np.arange(1, shares.size + 1, dtype=float)
        offset = (i - (len(runs) - 1) / 2) * width
        ax.bar(k + offset, shares, width=width, label=run_label(run))
    _mark_targets(ax, runs)
    ax.set_title("explained variance per principal component (final)")
    ax.set_xlabel("principal component j")
    ax.set_ylabel("evr_j (share of the feature variance)")
    ax.locator_params(axis="x", integer=True)
    ax.grid(True, axis="y", alpha=0.3)


def _nrc1_curve(ax: Axes, runs: Sequence[Run]) -> None:
    for run in runs:
        values = _series(run.final, "nrc1_at")
        ax.plot(np.arange(1, values.size + 1), values, marker="o", label=run_label(run))
    _mark_targets(ax, runs)
    ax.set_title("NRC1 with the top k components (final)")
    ax.set_xlabel("components k")
    ax.set_ylabel("NRC1@k (lower = collapsed)")
    ax.locator_params(axis="x", integer=True)
    ax.grid(True, alpha=0.3)


def _mark_targets(ax: Axes, runs: Sequence[Run]) -> None:
    """A dashed vertical line between component T and T + 1 for each targets' count present."""
    for t in sorted({run.final.t for run in runs if run.final.t is not None}):
        ax.axvline(t + 0.5, color="grey", linestyle="--", linewidth=0.9)
        ax.annotate(f"T = {t}", (t + 0.5, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", fontsize=8)  # fmt: skip


def _variance_trajectory(ax: Axes, run: Run) -> None:
    t = min(run.final.t or 1, components(run.final))
    for j in range(1, t + 1):
        y = np.array([r.metrics.get(f"evr_{j}", math.nan) for r in run.results], dtype=float)
        ax.plot(_x(run), y, marker="o", markersize=3, label=f"PC{j}")
    ax.set_title(f"{run_label(run)}: evr_1..evr_{t} by epoch")
    ax.set_xlabel(_x_label([run]))
    ax.set_ylabel("evr_j")
    ax.locator_params(axis="x", integer=True)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _x_label(runs: Sequence[Run]) -> str:
    by_order = any(e is None for run in runs for e in run.epochs)
    return "checkpoint (epoch where known)" if by_order else "epoch"


def _gamma_series(run: Run, field: str) -> np.ndarray:
    values = [gamma_record(r)[field] for r in run.results]
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def build_gamma_epochs_figure(runs: Sequence[Run]) -> Figure | None:
    """Per regression run, against epoch: the searched NRC3 gamma (solid), lambda_min (dotted)
    and the gamma nrc3 used (dashed, where the run's final gamma was held), and in a second
    panel gamma searched / lambda_min. None when no regression checkpoint searched a gamma."""
    chosen = [
        run
        for run in runs
        if run.task == "regression" and np.isfinite(_gamma_series(run, "gamma_searched")).any()
    ]
    if not chosen:
        return None
    fig = _figure(figsize=_size(2), dpi=_DPI, layout="constrained")
    values_ax, ratio_ax = _panel_grid(fig, 2)
    drawn = []
    for run in chosen:
        x, searched = _x(run), _gamma_series(run, "gamma_searched")
        (line,) = values_ax.plot(x, searched, marker="o", markersize=3)
        colour = line.get_color()
        lam_min, used = _gamma_series(run, "lambda_min"), _gamma_series(run, "gamma_used")
        values_ax.plot(x, lam_min, linestyle=":", color=colour)
        if not np.allclose(used, searched, equal_nan=True):
            values_ax.plot(x, used, linestyle="--", color=colour)
        ratio = _gamma_series(run, "gamma_ratio")
        ratio_ax.plot(x, ratio, marker="o", markersize=3, color=colour, label=run_label(run))
        drawn += [searched, lam_min, used]
    if wants_log(drawn):
        values_ax.set_yscale("log")
    _line_styles(values_ax)
    values_ax.set_title("NRC3 gamma and lambda_min")
    ratio_ax.set_title("gamma searched / lambda_min")
    for ax in (values_ax, ratio_ax):
        ax.set_xlabel(_x_label(chosen))
        ax.locator_params(axis="x", integer=True)
        ax.grid(True, alpha=0.3)
    fig.suptitle("NRC3 gamma at each checkpoint of the regression runs")
    _legend(fig, [ratio_ax])
    return fig


def _line_styles(ax: Axes) -> None:
    """A legend of what each line style means (empty lines as its handles)."""
    styles = (("-", "gamma searched"), (":", "lambda_min"), ("--", "gamma used (held)"))
    handles = [ax.plot([], [], linestyle=ls, color="black")[0] for ls, _ in styles]
    ax.legend(handles, [text for _, text in styles], fontsize="small")


def plot_regression_panels(
    runs: Sequence[Run],
    out_dir: str | Path,
    metrics: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """`regression_components.<fmt>` and `nrc3_gamma_epochs.<fmt>` for the regression runs
    (each only when it has something to draw); none when `metrics` names no regression key."""
    if metrics is not None and not [k for k in metrics if k in keys_for("regression")]:
        return []
    written: list[Path] = []
    for stem, build in (
        (COMPONENTS_STEM, build_components_figure),
        (GAMMA_EPOCHS_STEM, build_gamma_epochs_figure),
    ):
        fig = build(runs)
        if fig is not None:
            written += save_figure(fig, out_dir, stem, formats)
    return written
