"""Rendering the layer-by-layer comparison (`compare --by layer`): a table per level of the final
layer's `at` metric, a row per common layer in model order, each metric's value in run A, in
run B and their difference; then the first epoch each run's final layer reaches each level.

Owns how `ncinspect.depthcompare.LayerComparison` looks: `layer_comparison_grids` and
`layer_comparison_csv` (its JSON is `ncinspect.depthcompare.layer_comparison_json`). Never
matches or interpolates (`ncinspect.depthcompare` does) and formats numbers with
`ncinspect.render.tables`.
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

from ncinspect.errors import visible
from ncinspect.metrics.keys import METRICS
from ncinspect.render.tables import Grid, csv_cell, fmt_number, legend

if TYPE_CHECKING:
    from ncinspect.depthcompare import LayerComparison, LayerMatch


def _where(name: str, match: LayerMatch | None) -> str:
    """Where a run meets the level: its epoch (or checkpoints), or that it never does."""
    if match is None:
        return f"{name} never reaches it"
    if match.start == match.end:
        return f"{name} at {match.start}"
    if match.epoch is not None:
        return f"{name} at epoch {match.epoch:.4g}"
    return f"{name} {match.t:.2f} of the way from {match.start} to {match.end}"


def method_caption(c: LayerComparison) -> str:
    """How the values were found, in one paragraph."""
    name_a, name_b = visible(c.a.name), visible(c.b.name)
    final = c.a.final_layer
    if c.b.final_layer != final:
        final += f" / {c.b.final_layer}"
    own = f"; {c.at} itself in log" if c.at in c.metrics else ""
    return (
        f"each layer at the point of training where the run's final layer ({final}) first "
        f"reaches the {c.at} level: between the two checkpoints around the crossing, at the "
        f"fraction found in log {c.at} (linear in epoch{own}); never extrapolated (n/a: not "
        f"crossed, or undefined at the layer); diff = {name_b} - {name_a}"
    )


def layer_comparison_grids(c: LayerComparison) -> list[Grid]:
    """A grid per level (rows: the common layers in model order; columns: each metric in A, in
    B and B - A), the method, legend and notes under the first; then the first-passage grid."""
    headers = ["layer"]
    for k in c.metrics:
        h = METRICS[k].header
        headers += [f"{h} {c.a.name}", f"{h} {c.b.name}", f"{h} diff"]
    grids = []
    for n, m in enumerate(c.levels):
        title = (
            f"{c.a.name} vs {c.b.name} at final-layer {c.at} = {fmt_number(m.level)} "
            f"({_where(c.a.name, m.a)}; {_where(c.b.name, m.b)})"
        )
        caption = ""
        if n == 0:
            notes = [f"note: {line}" for line in c.notes]
            caption = "\n".join([method_caption(c), legend(c.metrics), *notes])
        grid = Grid(title, headers, numeric_from=1, caption=caption)
        for layer in c.layers:
            row = [layer]
            for k in c.metrics:
                row += [
                    fmt_number(m.value("a", layer, k)),
                    fmt_number(m.value("b", layer, k)),
                    fmt_number(m.diff(layer, k)),
                ]
            grid.rows.append(row)
        grids.append(grid)
    at = METRICS[c.at].header
    speed = Grid(
        f"first epoch whose final layer reaches each {c.at} level",
        [f"{at} (final layer)", c.a.name, c.b.name],
        0,
    )
    for m in c.levels:
        ea = c.first_epoch_reaching["a"].get(m.level)
        eb = c.first_epoch_reaching["b"].get(m.level)
        speed.rows.append([fmt_number(m.level), _reached(ea), _reached(eb)])
    grids.append(speed)
    return grids


def _reached(epoch: int | None) -> str:
    return "not reached" if epoch is None else str(epoch)


def layer_comparison_csv(c: LayerComparison) -> str:
    """One row per level, layer and metric: the level, the layer, the key, A's value, B's value
    and B - A (empty: n/a)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([c.at, "layer", "metric", csv_cell(c.a.name), csv_cell(c.b.name), "diff"])
    for m in c.levels:
        for layer in c.layers:
            for k in c.metrics:
                writer.writerow(
                    [
                        m.level,
                        csv_cell(layer),
                        k,
                        csv_cell(m.value("a", layer, k)),
                        csv_cell(m.value("b", layer, k)),
                        csv_cell(m.diff(layer, k)),
                    ]
                )
    return buf.getvalue()
