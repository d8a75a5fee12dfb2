"""Figures of collapse through depth (`plot --by layer`): metrics against the layers in model
order, and an epoch x layer heat map per run.

Owns `build_depth_figure` (a panel per metric, x = the layers in model order with their names
as tick labels; a line per run at its final checkpoint, or, when the profiles are one run's,
a line per checkpoint coloured by epoch), `build_depth_heatmap` (one metric, a panel per run:
a row per checkpoint in epoch order, a column per layer in model order, one colour scale shared
by the panels, log when the values are positive and span decades; an undefined cell is left
blank) and `plot_depth`, which writes both per task. Draws with `ncinspect.render.plots`'
helpers (its Agg `Figure`, panel grid, legend and atomic `save_figure`), so matplotlib stays
behind that module. Never computes a metric or groups results: it reads the `Result`s of
`ncinspect.depth.DepthProfile`s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ncinspect.errors import UsageError
from ncinspect.io.discovery import natural_key
from ncinspect.metrics.keys import METRICS, keys_for
from ncinspect.metrics.results import checkpoint_name
from ncinspect.render.plots import (
    _DPI,
    _figure,
    _legend,
    _panel_grid,
    _panel_title,
    _size,
    plain_text,
    save_figure,
    wants_log,
)

if TYPE_CHECKING:
    from ncinspect.depth import DepthProfile
    from ncinspect.metrics.results import Result
    from ncinspect.render.plots import Axes, Figure  # matplotlib's types, named where it lives

# The panels of the depth figure: the keys every layer has (no head needed).
DEPTH_PLOT: dict[str, tuple[str, ...]] = {
    "classification": (
        "nc1",
        "separation_fuzziness",
        "nc1_cdnv",
        "nc2_etf_means",
        "ncc_accuracy",
    ),
    "regression": ("nrc1", "nrc1_centered", "evr"),
}
# The heat map's metric when --metrics names none of the task's keys.
HEATMAP_DEFAULT = {"classification": "nc1", "regression": "nrc1"}
DEPTH_STEM = "{task}_depth"
HEATMAP_STEM = "{task}_depth_heatmap_{key}"
_TICK_ROWS = 20  # at most about this many epoch labels on a heat map's rows


def _series(p: DepthProfile) -> tuple[str, str | None]:
    return (p.key, p.split)


def _by_series(
    profiles: Sequence[DepthProfile],
) -> dict[tuple[str, str | None], list[DepthProfile]]:
    """The profiles of each run and split, in epoch order (unknown epochs last)."""
    out: dict[tuple[str, str | None], list[DepthProfile]] = {}
    for p in profiles:
        out.setdefault(_series(p), []).append(p)
    for members in out.values():
        members.sort(key=lambda p: (p.epoch is None, p.epoch or 0, natural_key(p.checkpoint)))
    return out


def _model_order(r: Result) -> tuple[Any, ...]:
    return (r.layer_order is None, r.layer_order or 0, natural_key(r.layer or ""))


def layer_axis(profiles: Sequence[DepthProfile]) -> list[str]:
    """Every layer of the profiles once, in model order (by `layer_order`, the first result of
    a layer deciding; layers without one last, by name)."""
    first: dict[str, Result] = {}
    for p in profiles:
        for r in p.results:
            first.setdefault(r.layer or "?", r)
    return sorted(first, key=lambda name: _model_order(first[name]))


def _values(p: DepthProfile, layers: Sequence[str], key: str) -> np.ndarray:
    """The profile's `key` at each of `layers` (NaN where it lacks the layer or the value)."""
    by_layer: dict[str, float] = {}
    for r in p.results:
        by_layer.setdefault(r.layer or "?", r.metrics.get(key, math.nan))
    return np.array([by_layer.get(name, math.nan) for name in layers], dtype=float)


def _name(p: DepthProfile, with_split: bool) -> str:
    from ncinspect.runs import label_text

    split = f"[{p.split or '-'}]" if with_split else ""
    labels = label_text(p.labels)
    return f"{p.run}{split}" + (f" ({labels})" if labels else "")


def _when(p: DepthProfile) -> str:
    return checkpoint_name(p.checkpoint) if p.epoch is None else f"epoch {p.epoch}"


def _layer_ticks(ax: Axes, layers: Sequence[str], axis: str = "x") -> None:
    labels = [plain_text(name) for name in layers]
    if axis == "x":
        long = len(layers) > 6 or max((len(n) for n in layers), default=0) > 8
        ax.set_xticks(range(len(layers)), labels, rotation=45 if long else 0,
                      ha="right" if long else "center")  # fmt: skip
    else:
        ax.set_yticks(range(len(layers)), labels)


def _one_task(profiles: Sequence[DepthProfile]) -> str:
    if not profiles:
        raise UsageError("no layer profiles to plot")
    tasks = sorted({p.task for p in profiles})
    if len(tasks) > 1:
        raise UsageError(f"one figure holds layers of one task, got {', '.join(tasks)}")
    return tasks[0]


def build_depth_figure(
    profiles: Sequence[DepthProfile], metrics: Sequence[str] | None = None
) -> Figure:
    """A panel per metric (default `DEPTH_PLOT` of the task) against the layers in model order.
    Several runs (or splits): a line per run at its final checkpoint. One run: a line per
    checkpoint, coloured by epoch (by checkpoint order when an epoch is unknown) with a colour
    bar. Log y where a panel's positive values span more than `plots.LOG_DECADES` decades."""
    task = _one_task(profiles)
    keys = list(metrics if metrics is not None else DEPTH_PLOT[task])
    series = _by_series(profiles)
    layers = layer_axis(profiles)
    with_split = len({split for _, split in series}) > 1
    one_run = len(series) == 1 and len(next(iter(series.values()))) > 1
    if one_run:
        lines = next(iter(series.values()))
        title = f"{_name(lines[0], with_split)}: through depth at each checkpoint"
    else:
        lines = [members[-1] for members in series.values()]
        title = f"{task} runs through depth at each run's final checkpoint"
    fig = _figure(figsize=_size(len(keys)), dpi=_DPI, layout="constrained")
    axes = _panel_grid(fig, len(keys))
    x = np.arange(len(layers), dtype=float)
    by_order = any(p.epoch is None for p in lines)
    shade = np.array(
        [i + 1 if by_order else p.epoch for i, p in enumerate(lines)], dtype=float
    )  # what colours a line in the one-run figure
    for ax, key in zip(axes, keys, strict=True):
        ys = [_values(p, layers, key) for p in lines]
        log = wants_log(ys)
        colours: list[Any] = [None] * len(lines)
        if one_run:  # the points carry the colour scale; each line takes its colour from it
            xs = np.concatenate([x] * len(lines))
            cs = np.repeat(shade, len(layers))
            flat = np.concatenate(ys)
            points = ax.scatter(xs, np.where(flat > 0, flat, np.nan) if log else flat, c=cs,
                                cmap="viridis", vmin=shade.min(), vmax=shade.max(), s=12,
                                zorder=3)  # fmt: skip
            colours = [points.to_rgba(v) for v in shade]
        for p, y, colour in zip(lines, ys, colours, strict=True):
            if log:
                y = np.where(y > 0, y, np.nan)
            label = None if one_run else plain_text(f"{_name(p, with_split)}, {_when(p)}")
            ax.plot(x, y, marker=None if one_run else "o", markersize=3, color=colour,
                    label=label)  # fmt: skip
        if log:
            ax.set_yscale("log")
        _layer_ticks(ax, layers)
        ax.set_title(_panel_title(key))
        ax.set_xlabel("layer (model order)")
        ax.grid(True, alpha=0.3)
    if one_run and axes:
        label = "checkpoint (in epoch order)" if by_order else "epoch"
        fig.colorbar(points, ax=axes, label=label)
    fig.suptitle(plain_text(title))
    if not one_run:
        _legend(fig, axes)
    return fig


def heatmap_key(task: str, metrics: Sequence[str] | None) -> str:
    """The heat map's metric: the first of `metrics` that is a key of the task, else
    `HEATMAP_DEFAULT`."""
    return next((k for k in metrics or () if k in keys_for(task)), HEATMAP_DEFAULT[task])


def heatmap_cells(members: Sequence[DepthProfile], key: str) -> tuple[list[str], np.ndarray]:
    """(the layers in model order, the (checkpoints x layers) values of `key`; NaN where a
    checkpoint lacks the layer or the value)."""
    layers = layer_axis(members)
    return layers, np.array([_values(p, layers, key) for p in members], dtype=float)


def build_depth_heatmap(profiles: Sequence[DepthProfile], key: str) -> Figure:
    """`key` over checkpoints x layers, a panel per run (and split): a row per checkpoint in
    epoch order (the first at the top), a column per layer in model order. One colour scale for
    every panel (log when every finite value is positive and they span more than
    `plots.LOG_DECADES` decades); an undefined cell is blank (hatched background)."""
    task = _one_task(profiles)
    if key not in keys_for(task):
        raise UsageError(f"the heat map's metric {key} is not a {task} key")
    series = _by_series(profiles)
    with_split = len({split for _, split in series}) > 1
    cells = [(members, *heatmap_cells(members, key)) for members in series.values()]
    finite = np.concatenate([v[np.isfinite(v)] for _, _, v in cells] or [np.empty(0)])
    log = bool(finite.size) and bool((finite > 0).all()) and wants_log([finite])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig = _figure(figsize=_size(len(cells)), dpi=_DPI, layout="constrained")
    axes = _panel_grid(fig, len(cells))
    image = None
    for ax, (members, layers, values) in zip(axes, cells, strict=True):
        image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis",
                          norm="log" if log else "linear", vmin=lo, vmax=hi)  # fmt: skip
        image.set_cmap(image.get_cmap().with_extremes(bad=(0.0, 0.0, 0.0, 0.0)))
        ax.set_facecolor("white")
        ax.patch.set_hatch("//")
        ax.patch.set_edgecolor("0.8")
        _layer_ticks(ax, layers)
        step = max(1, math.ceil(len(members) / _TICK_ROWS))
        rows = list(range(0, len(members), step))
        ax.set_yticks(rows, [plain_text(_when(members[i])) for i in rows])
        ax.set_xlabel("layer (model order)")
        ax.set_title(plain_text(_name(members[0], with_split)), fontsize="medium")
    if image is not None:
        scale = " (log)" if log else ""
        fig.colorbar(image, ax=axes, label=f"{METRICS[key].header} ({key}){scale}")
    fig.suptitle(plain_text(f"{_panel_title(key)} by checkpoint and layer; hatched: undefined"))
    return fig


def plot_depth(
    profiles: Sequence[DepthProfile],
    out_dir: str | Path,
    metrics: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """Per task present: `<task>_depth.<fmt>` (`build_depth_figure`) and
    `<task>_depth_heatmap_<key>.<fmt>` (`build_depth_heatmap` of `heatmap_key`). `metrics`
    (when given) keeps each task's keys; naming none of any task present is a UsageError."""
    if not profiles:
        raise UsageError("no layer stores to plot; write them with extract --layers")
    written: list[Path] = []
    tasks = [t for t in ("classification", "regression") if any(p.task == t for p in profiles)]
    for task in tasks:
        chosen = [p for p in profiles if p.task == task]
        keys = None if metrics is None else [k for k in metrics if k in keys_for(task)]
        if keys == []:
            continue
        stem = DEPTH_STEM.format(task=task)
        written += save_figure(build_depth_figure(chosen, keys), out_dir, stem, formats)
        key = heatmap_key(task, keys)
        stem = HEATMAP_STEM.format(task=task, key=key)
        written += save_figure(build_depth_heatmap(chosen, key), out_dir, stem, formats)
    if not written:
        raise UsageError(
            f"--metrics {','.join(metrics or ())}: no key of the layer stores' task "
            f"({', '.join(tasks)}); e.g. {', '.join(DEPTH_PLOT[tasks[0]])}"
        )
    return written
