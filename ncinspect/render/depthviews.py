"""Rendering collapse through depth (`report --by layer`): a table per depth profile, one row
per layer in model order, and the law of data separation's fit of every profile side by side.

Owns how `ncinspect.depth.DepthProfile`s look: `depth_columns` (the keys a profile table shows),
`depth_grids` (the per-profile tables, then the `separation_grid` summary), `depth_json` and
`depth_csv`. A cell of a key that needs the head reads "-" on a layer without one (only the
layer feeding the head has it). Never computes a metric or a fit (`ncinspect.depth` does) and
formats numbers with `ncinspect.render.tables`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ncinspect._version import __version__
from ncinspect.metrics.head import HEAD_ABSENT, NO_CLASSIFIER, NO_LAYER_HEAD, NO_REGRESSOR
from ncinspect.metrics.keys import METRICS, keys_for
from ncinspect.metrics.regression import NO_PREDICTIONS
from ncinspect.metrics.results import checkpoint_name
from ncinspect.render.tables import Grid, csv_cell, fmt_number, legend, mixed_splits, split_text

if TYPE_CHECKING:
    from ncinspect.depth import DepthProfile
    from ncinspect.metrics.results import Result

# What a profile table shows by default: the keys every layer has, then those of the layer with
# the head ("-" on the others).
DEPTH_KEYS: dict[str, tuple[str, ...]] = {
    "classification": (
        "nc1",
        "nc1_cdnv",
        "nc2_etf_means",
        "ncc_accuracy",
        "separation_fuzziness",
        "nc3",
        "nc4",
        "accuracy",
    ),
    "regression": ("nrc1", "nrc1_centered", "evr", "nrc2", "nrc3", "r2"),
}
NO_HEAD_CELL = "-"


def depth_columns(task: str, selected: Sequence[str] | None) -> list[str]:
    """The keys a profile table of `task` shows: the selection (in catalogue order), else
    `DEPTH_KEYS`."""
    if selected:
        return [k for k in keys_for(task) if k in selected]
    return list(DEPTH_KEYS[task])


def _headless(r: Result) -> bool:
    return r.info.get("head") == HEAD_ABSENT


def _cell(r: Result, key: str) -> str:
    """The value, or `NO_HEAD_CELL` where it is null for want of a head (any other null: n/a)."""
    if r.info.get("undefined", {}).get(key) in (
        NO_CLASSIFIER,
        NO_REGRESSOR,
        NO_LAYER_HEAD,
        NO_PREDICTIONS,
    ):
        return NO_HEAD_CELL
    return fmt_number(r.metrics.get(key))


def _title(p: DepthProfile, with_split: bool) -> str:
    from ncinspect.runs import label_text

    labels = label_text(p.labels)
    epoch = "" if p.epoch is None else f", epoch {p.epoch}"
    del labels  # the labels are in the fit table (and --by run); the title stays one line
    title = f"{p.run}: {checkpoint_name(p.checkpoint)}{epoch}"
    if with_split:
        title += f", split {split_text(p.split)}"
    return title + f" ({len(p.results)} layers)"


def _fit_text(p: DepthProfile) -> str:
    """The fit line under a profile's table: rho and R^2, or why there is none."""
    fit = p.fit
    if math.isnan(fit.decay):
        return f"separation decay: no fit ({fit.undefined['separation_decay']})"
    text = f"separation decay rho = {fmt_number(fit.decay)}, "
    if math.isnan(fit.r2):
        return text + f"R^2 n/a ({fit.undefined['separation_r2']})"
    return text + f"R^2 = {fmt_number(fit.r2)}"


def depth_grids(
    profiles: Sequence[DepthProfile], selected: Sequence[str] | None = None
) -> list[Grid]:
    """A grid per profile (layer, D and `depth_columns`, one row per layer in model order, its
    fit in the caption), then `separation_grid` when a profile is classification."""
    grids = []
    with_split = mixed_splits(p.split for p in profiles)
    last = {p.task: i for i, p in enumerate(profiles)}  # the legend once, under a task's last
    for i, p in enumerate(profiles):
        keys = depth_columns(p.task, selected)
        caption = [_fit_text(p)] if p.task == "classification" else []
        caption += [f"warning: {w}" for w in p.warnings]
        if last[p.task] == i:
            caption.append(legend(keys))
            if any(_headless(r) for q in profiles if q.task == p.task for r in q.results):
                caption.append(f"{NO_HEAD_CELL}: the layer has no head (only the head's input has)")
        grid = Grid(
            _title(p, with_split),
            ["layer", "D", *(METRICS[k].header for k in keys)],
            numeric_from=1,
            caption="\n".join(c for c in caption if c),
        )
        for r in p.results:
            grid.rows.append([r.layer or "?", str(r.d), *(_cell(r, k) for k in keys)])
        grids.append(grid)
    fitted = [p for p in profiles if p.task == "classification"]
    if fitted:
        grids.append(separation_grid(fitted, with_split))
    return grids


def separation_grid(profiles: Sequence[DepthProfile], with_split: bool = False) -> Grid:
    """One row per profile: its run, labels, checkpoint, layers, F at the first and last layer,
    the decay rho and R^2 (n/a with the reasons in the caption)."""
    from ncinspect.runs import label_text

    ids = ["run", "labels", "checkpoint", "epoch", *(["split"] if with_split else [])]
    headers = [*ids, "layers", "F first", "F last", "rho", "R^2"]
    grid = Grid("law of data separation (He & Su 2023)", headers, numeric_from=len(ids))
    reasons: list[str] = []
    for p in profiles:
        first, last = (p.results[0], p.results[-1]) if p.results else (None, None)
        row = [
            p.run,
            label_text(p.labels) or "-",
            checkpoint_name(p.checkpoint),
            "-" if p.epoch is None else str(p.epoch),
            *([split_text(p.split)] if with_split else []),
            str(len(p.results)),
            fmt_number(None if first is None else first.metrics.get("separation_fuzziness")),
            fmt_number(None if last is None else last.metrics.get("separation_fuzziness")),
            fmt_number(p.fit.decay),
            fmt_number(p.fit.r2),
        ]
        grid.rows.append(row)
        for key, reason in p.fit.undefined.items():
            line = f"{p.run} {checkpoint_name(p.checkpoint)}: {key} n/a: {reason}"
            if line not in reasons:
                reasons.append(line)
    grid.caption = "\n".join(
        [
            "F = separation_fuzziness = tr(Sigma_W pinv(Sigma_B)) per layer; least squares of "
            "log F_l = a + l log(rho) over the layers in model order (l = 0 .. L-1); rho < 1: "
            "separation improves with depth; R^2: how geometric the decay is",
            *reasons,
        ]
    )
    return grid


def depth_json(profiles: Sequence[DepthProfile], selected: Sequence[str] | None = None) -> str:
    """{"ncinspect_version", "profiles": [each profile's fit and layers], "results": [every
    layer result of the profiles, with its `layer` and `layer_order`]}; `selected` narrows the
    results' metrics."""
    results = []
    for p in profiles:
        for r in p.results:
            record = r.to_json()
            if selected:
                record["metrics"] = {k: v for k, v in record["metrics"].items() if k in selected}
            results.append(record)
    doc: dict[str, Any] = {
        "ncinspect_version": __version__,
        "profiles": [p.to_json() for p in profiles],
        "results": results,
    }
    return json.dumps(doc, indent=2, allow_nan=False)


def depth_csv(profiles: Sequence[DepthProfile], selected: Sequence[str] | None = None) -> str:
    """One row per layer result: who (run, task, checkpoint, epoch, split), the layer, its place
    and D, the keys (every key of the task unless `selected`), then its profile's fit (the same
    on every row of a profile)."""
    tasks = [t for t in ("classification", "regression") if any(p.task == t for p in profiles)]
    keys = [k for t in tasks for k in (depth_columns(t, selected) if selected else keys_for(t))]
    keys = list(dict.fromkeys(keys))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    ids = ["run", "task", "checkpoint", "epoch", "split", "layer", "layer_order", "d", "source"]
    writer.writerow([*ids, *keys, "separation_decay", "separation_r2"])
    for p in profiles:
        for r in p.results:
            writer.writerow(
                [
                    csv_cell(p.run),
                    csv_cell(p.task),
                    csv_cell(p.checkpoint),
                    csv_cell(p.epoch),
                    csv_cell(p.split),
                    csv_cell(r.layer),
                    csv_cell(r.layer_order),
                    r.d,
                    csv_cell(r.source),
                    *(csv_cell(r.metrics.get(k)) for k in keys),
                    csv_cell(p.fit.decay),
                    csv_cell(p.fit.r2),
                ]
            )
    return buf.getvalue()
