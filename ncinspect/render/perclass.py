"""Rendering the per-class tables (`report --per-class N`): the most and least frequent classes.

Owns how a result's `per_class` record (`ncinspect.metrics.perclass.class_table`) looks: one
grid per result (the most frequent classes, a marker row, the least frequent), `per_class_csv`
(one row per class shown) and `per_class_json`. Never computes a statistic and formats numbers
with `ncinspect.render.tables`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from ncinspect._version import __version__
from ncinspect.metrics.perclass import PER_CLASS_COLUMNS
from ncinspect.metrics.results import Result, jsonable
from ncinspect.render.tables import Grid, csv_cell, fmt_number, result_labels, split_text

# column -> header
HEADERS: dict[str, str] = {
    "count": "n_k",
    "share": "share",
    "recall": "recall",
    "ncc_recall": "NCC recall",
    "within_var": "tr Sw_k",
    "mean_norm": "|mu_k-mu_G|",
    "rel_var": "rel var",
    "weight_norm": "|w_k|",
    "duality": "cos(w,mu)",
}

GROUPS = ("most_frequent", "least_frequent")


def _title(r: Result) -> str:
    run, ckpt = result_labels(r)
    epoch = "" if r.epoch is None else f", epoch {r.epoch}"
    split = "" if r.split is None else f" [{split_text(r.split)}]"
    layer = "" if r.layer is None else f", layer {r.layer}"
    return f"{run} {ckpt}{split}{epoch}{layer}"


def _caption(r: Result, table: dict[str, Any]) -> str:
    shown = len(table["most_frequent"]) + len(table["least_frequent"])
    lines = [
        f"{shown} of the {table['classes']} classes with samples (K = {r.k}), ranked by n_k "
        "(rank 1 the most frequent)",
        "recall: accuracy on the class; NCC recall: nearest-class-mean accuracy on it; "
        "tr Sw_k: its within-class variance; rel var = tr Sw_k / |mu_k-mu_G|^2",
    ]
    if "min_count" in r.info:
        lines.append(
            f"--min-count {r.info['min_count']}: {r.info.get('classes_below_min_count', 0)} "
            "rarer class(es) left out"
        )
    return "\n".join(lines)


def per_class_grids(results: Sequence[Result]) -> list[Grid]:
    """One grid per result with a per-class table (others are passed over)."""
    grids = []
    for r in results:
        table = r.per_class
        if table is None:
            continue
        grid = Grid(_title(r), ["rank", "class", *HEADERS.values()], 0, _caption(r, table))
        for group in GROUPS:
            rows = table[group]
            if group == "least_frequent" and rows and table["most_frequent"]:
                grid.rows.append(["...", "", *("" for _ in HEADERS)])
            for row in rows:
                cells = [str(row["rank"]), str(row["class"])]
                cells += [str(row["count"])] + [
                    fmt_number(row[k]) for k in PER_CLASS_COLUMNS if k != "count"
                ]
                grid.rows.append(cells)
        grids.append(grid)
    return grids


def per_class_csv(results: Sequence[Result]) -> str:
    """One row per class shown: who (run, checkpoint, epoch, split, layer, source), its group
    (most_frequent or least_frequent), rank, class and the columns."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    ids = ["run", "checkpoint", "epoch", "split", "layer", "source"]
    writer.writerow([*ids, "group", "rank", "class", *PER_CLASS_COLUMNS])
    for r in results:
        if r.per_class is None:
            continue
        who = [r.run, r.checkpoint, r.epoch, r.split, r.layer, r.source]
        for group in GROUPS:
            for row in r.per_class[group]:
                writer.writerow(
                    [
                        *(csv_cell(v) for v in who),
                        group,
                        row["rank"],
                        row["class"],
                        *(csv_cell(row[k]) for k in PER_CLASS_COLUMNS),
                    ]
                )
    return buf.getvalue()


def per_class_json(results: Sequence[Result]) -> str:
    """{"ncinspect_version", "columns": {column: [definition, direction]}, "results": [every
    result's JSON record, its "per_class" included]}."""
    doc = {
        "ncinspect_version": __version__,
        "columns": {k: list(v) for k, v in PER_CLASS_COLUMNS.items()},
        "results": [r.to_json() for r in results if r.per_class is not None],
    }
    return json.dumps(jsonable(doc), indent=2, allow_nan=False)
