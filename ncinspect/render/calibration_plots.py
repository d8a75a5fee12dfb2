"""Reliability diagrams: each run's final checkpoint before and after temperature scaling.

Owns `build_reliability_figure` and `plot_reliability` (`plot --reliability`, written as
`reliability.<fmt>`): one row per run whose final checkpoint has calibration histograms (a
classification store with logits; `Result.extras[CALIBRATION_BINS]`, gathered by
`analysis.calibration` with the same accumulators as `ece`), two panels in it: at T = 1 and at
the fitted temperature. Each panel draws the accuracy of every non-empty equal-width confidence
bin as a bar over the bin, its mean confidence against its accuracy as points, and the diagonal
(perfect calibration); the legend gives `ece` or `ece_ts` from the result. Draws through
`render.plots`' figure and writer (matplotlib stays there); never computes a metric and never
opens a store. Axes: M bins.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ncinspect.analysis.calibration import CALIBRATION_BINS
from ncinspect.errors import UsageError
from ncinspect.metrics.results import Result, checkpoint_name
from ncinspect.render.plots import _DPI, _figure, plain_text, save_figure
from ncinspect.runs import Run

if TYPE_CHECKING:
    from ncinspect.render.plots import Axes, Figure  # matplotlib's types, named where it lives

_TITLE_WIDTH = 50  # characters per line of a panel's title (a store's path can be long)
NO_BINS = (
    "--reliability: no run's final checkpoint has calibration histograms (a classification "
    "store with logits (not --stats-only or --next-token), analysed without --no-calibration)"
)


def reliability_points(bins: dict[str, Any], scaled: bool) -> tuple[np.ndarray, ...]:
    """(left edges, widths, mean confidence, accuracy) of the non-empty bins of a histogram
    record, at T = 1 or (`scaled`) at the fitted temperature (empty arrays when there is none)."""
    suffix = "_ts" if scaled else ""
    count = bins[f"count{suffix}"]
    edges = np.asarray(bins["edges"], dtype=float)
    if count is None:
        return (np.empty(0),) * 4
    count = np.asarray(count)
    full = count > 0
    conf = np.asarray(bins[f"conf_sum{suffix}"], dtype=float)[full] / count[full]
    accuracy = np.asarray(bins[f"correct{suffix}"], dtype=float)[full] / count[full]
    return edges[:-1][full], np.diff(edges)[full], conf, accuracy


def _panel(ax: Axes, bins: dict[str, Any], scaled: bool, ece: float | None, title: str) -> None:
    left, width, conf, accuracy = reliability_points(bins, scaled)
    shown = "n/a" if ece is None or not math.isfinite(ece) else f"{ece:.4f}"
    key = "ece_ts" if scaled else "ece"
    label = f"accuracy per bin ({key} {shown})"
    ax.bar(left, accuracy, width=width, align="edge", alpha=0.5, edgecolor="black", label=label)
    ax.plot(conf, accuracy, "o", color="C3", markersize=4, label="mean confidence, accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    if not left.size:
        ax.text(0.5, 0.5, "no temperature", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(_wrapped(title), fontsize="medium")
    ax.legend(loc="upper left", fontsize="small")


def _wrapped(title: str) -> str:
    """The title shown literally (`plain_text`), in lines of about `_TITLE_WIDTH` characters
    broken at spaces only."""
    lines = textwrap.wrap(title, _TITLE_WIDTH, break_long_words=False, break_on_hyphens=False)
    return "\n".join(plain_text(line) for line in lines)


def _scaled_title(result: Result) -> str:
    temperature = result.metrics.get("temperature", math.nan)
    if not math.isfinite(temperature):
        return "after scaling: no temperature"
    fitted_on = result.info.get("calibration_split", "")
    return f"after scaling, T = {temperature:.4g}, fitted on {fitted_on}"


def build_reliability_figure(runs: Sequence[Run]) -> Figure:
    """One row per run with calibration histograms at its final checkpoint: the reliability
    diagram at T = 1 (left) and at the fitted temperature (right). UsageError when no run has
    them."""
    shown = [run for run in runs if CALIBRATION_BINS in run.final.extras]
    if not shown:
        raise UsageError(NO_BINS)
    fig = _figure(figsize=(9.0, 4.2 * len(shown) + 0.4), dpi=_DPI, layout="constrained")
    grid = fig.subplots(len(shown), 2, squeeze=False)
    for row, run in zip(grid, shown, strict=True):
        final = run.final
        bins = final.extras[CALIBRATION_BINS]
        where = f"{run.name}, {checkpoint_name(final.checkpoint or final.source)}"
        _panel(row[0], bins, False, final.metrics.get("ece"), f"{where}: before scaling (T = 1)")
        _panel(row[1], bins, True, final.metrics.get("ece_ts"), _scaled_title(final))
    fig.suptitle("Reliability of the final checkpoints")
    return fig


def plot_reliability(
    runs: Sequence[Run], out_dir: str | Path, formats: Sequence[str] = ("png", "svg")
) -> list[Path]:
    """`reliability.<fmt>`: see `build_reliability_figure`."""
    return save_figure(build_reliability_figure(runs), out_dir, "reliability", formats)
