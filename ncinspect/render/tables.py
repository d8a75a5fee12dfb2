"""Rendering results: rich tables, JSON, CSV and Markdown (rich lives here and in the CLI).

Owns: how results look (headers, number formatting, legends, grouping by task), and making the
names that come from files (runs, checkpoints, sources, labels, splits) inert in every format:
`visible` escapes control characters in text, `md_cell` escapes Markdown, `csv_cell` neutralises
spreadsheet formulas, and rich never reads them as markup or emoji codes. Never computes a
metric and never reads a store.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from ncinspect._version import __version__
from ncinspect.errors import visible
from ncinspect.metrics.keys import CALIBRATION_KEYS, METRICS, TABLE_DEFAULT, keys_for
from ncinspect.metrics.results import Result, checkpoint_name, run_key
from ncinspect.render.ufm import (
    distance_caption,
    distance_rows,
    distance_title,
    report_rows,
    report_title,
)
from ncinspect.ufm.distance import UFM_CAVEAT

if TYPE_CHECKING:
    pass

TASK_ORDER = ("classification", "regression")
ID_COLUMNS = ("source", "run", "checkpoint", "epoch", "task", "split", "n", "d", "k", "t")


def fmt_number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


# What a spreadsheet reads as the start of a formula (CSV injection): such a text cell is
# prefixed with a quote, which the spreadsheet shows as text; numbers are never altered.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
# Markdown that could break out of a table cell or add markup: the escape character itself, the
# cell separator, code spans and HTML.
_MARKDOWN_ESCAPES = str.maketrans({"\\": "\\\\", "|": "\\|", "`": "\\`", "<": "&lt;", ">": "&gt;"})


def csv_cell(value: Any) -> Any:
    """A CSV cell: text with visible control characters and a `'` before a formula start;
    numbers as they are; None and non-finite floats empty."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if isinstance(value, str):
        text = visible(value)
        return "'" + text if value.startswith(_FORMULA_START) else text
    return value


def md_cell(text: str) -> str:
    """Text for one Markdown table cell or title: visible control characters (no new line can
    start a forged row) and escaped `\\`, `|`, backticks and HTML brackets."""
    return visible(text).translate(_MARKDOWN_ESCAPES)


def _rich_lines(text: str) -> str:
    """A title or caption whose own line breaks stay (names inside were made visible)."""
    return "\n".join(visible(line) for line in text.split("\n"))


def by_task(results: Sequence[Result]) -> dict[str, list[Result]]:
    groups: dict[str, list[Result]] = {}
    for task in TASK_ORDER:
        rows = [r for r in results if r.task == task]
        if rows:
            groups[task] = rows
    return groups


def columns_for(task: str, selected: Sequence[str] | None, *, table: bool) -> list[str]:
    """The metric keys to show for a task: the selection (in catalogue order) or the defaults."""
    every = keys_for(task)
    if selected:
        return [k for k in every if k in selected]
    return list(TABLE_DEFAULT[task] if table else every)


def result_labels(r: Result, names: dict[str, str] | None = None) -> tuple[str, str]:
    """(run, checkpoint) as a row shows them; `names` from `_run_names` tells runs of one name
    in two folders apart."""
    src = Path(r.source)
    if names is not None:
        run = names[run_key(r)]
    else:
        run = r.run if r.run is not None else src.parent.name or "."
    ckpt = checkpoint_name(r.checkpoint) if r.checkpoint is not None else src.name
    return run, ckpt


def _run_names(results: Sequence[Result]) -> dict[str, str]:
    from ncinspect.runs import run_names

    return run_names(run_key(r) for r in results)


def split_text(split: str | None) -> str:
    return "-" if split is None else split


def mixed_splits(splits: Iterable[str | None]) -> bool:
    """True when more than one split is present (a store without one counts as its own)."""
    return len(set(splits)) > 1


def build_tables(results: Sequence[Result], selected: Sequence[str] | None) -> list[Table]:
    """One table per task; a split column when the task's rows hold more than one split."""
    tables = []
    names = _run_names(results)
    for task, rows in by_task(results).items():
        keys = columns_for(task, selected, table=True)
        if not keys:
            continue
        table = Table(title=f"{task} ({len(rows)} source{'s' if len(rows) != 1 else ''})")
        table.add_column("run", no_wrap=True)
        table.add_column("checkpoint", overflow="fold", min_width=10)
        with_split = mixed_splits(r.split for r in rows)
        if with_split:
            table.add_column("split", no_wrap=True)
        table.add_column("epoch", justify="right", no_wrap=True)
        table.add_column("N", justify="right", no_wrap=True)
        for key in keys:
            header = METRICS[key].header
            table.add_column(header, justify="right", no_wrap=True)
        for r in rows:
            run, ckpt = result_labels(r, names)
            epoch = "-" if r.epoch is None else str(r.epoch)
            values = [fmt_number(r.metrics.get(k)) for k in keys]
            split = [visible(split_text(r.split))] if with_split else []
            table.add_row(visible(run), visible(ckpt), *split, epoch, str(r.n), *values)
        caption = [legend(keys)]
        hidden = len(keys_for(task)) - len(keys)
        if hidden and not selected:
            caption.append(f"{hidden} more keys with --metrics all or --format json")
        table.caption = "\n".join(caption)
        table.caption_justify = "left"
        tables.append(table)
    return tables


def print_tables(
    results: Sequence[Result],
    selected: Sequence[str] | None = None,
    *,
    file: IO[str] | None = None,
    width: int | None = None,
    color: bool | None = None,
) -> None:
    tables = build_tables(results, selected) + [g.table() for g in ufm_grids(results)]
    _print_rich(tables, file=file, width=width, color=color)


def _print_rich(
    tables: Sequence[Table], *, file: IO[str] | None, width: int | None, color: bool | None
) -> None:
    # markup and emoji off: a run named `[red]x[/]` or `:fire:` is shown as it is named.
    def make(w: int | None) -> Console:
        return Console(
            file=file,
            width=w,
            no_color=(color is False),
            force_terminal=None if color is None else color,
            highlight=False,
            markup=False,
            emoji=False,
        )

    console = make(width)
    if width is None:
        # Never squeeze numbers into ellipses: widen past a narrow terminal instead.
        ruler = Console(width=10_000, file=io.StringIO(), markup=False, emoji=False)
        natural = max((ruler.measure(t).maximum for t in tables), default=0)
        if natural > console.width:
            console = make(natural)
    for i, table in enumerate(tables):
        if i:
            console.print()
        console.print(table)


def table_text(results: Sequence[Result], selected: Sequence[str] | None, width: int) -> str:
    """The table as plain text at a fixed width, without colour (for golden files)."""
    buf = io.StringIO()
    print_tables(results, selected, file=buf, width=width, color=False)
    return buf.getvalue()


def to_json(results: Sequence[Result], selected: Sequence[str] | None = None) -> str:
    records = []
    for r in results:
        rec = r.to_json()
        if selected:
            rec["metrics"] = {k: v for k, v in rec["metrics"].items() if k in selected}
        records.append(rec)
    doc = {"ncinspect_version": __version__, "results": records}
    return json.dumps(doc, indent=2, allow_nan=False)


def to_csv(results: Sequence[Result], selected: Sequence[str] | None = None) -> str:
    keys: list[str] = []
    for task, _ in by_task(results).items():
        keys.extend(columns_for(task, selected, table=False))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*ID_COLUMNS, *keys])
    for r in results:
        rec = r.to_json()
        ids = [csv_cell(rec[c]) for c in ID_COLUMNS]
        writer.writerow([*ids, *(csv_cell(r.metrics.get(k)) for k in keys)])
    return buf.getvalue()


def to_markdown(results: Sequence[Result], selected: Sequence[str] | None = None) -> str:
    parts = []
    names = _run_names(results)
    for task, rows in by_task(results).items():
        keys = columns_for(task, selected, table=False if selected else True)
        with_split = mixed_splits(r.split for r in rows)
        ids = ["run", "checkpoint", *(["split"] if with_split else [])]
        head = [*ids, "epoch", "N", *(f"{METRICS[k].header}" for k in keys)]
        lines = [f"**{task}**", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "|".join(["---"] * len(ids) + ["---:"] * (len(head) - len(ids))) + "|")
        for r in rows:
            run, ckpt = result_labels(r, names)
            epoch = "" if r.epoch is None else str(r.epoch)
            split = [md_cell(split_text(r.split))] if with_split else []
            cells = [md_cell(run), md_cell(ckpt), *split, epoch, str(r.n)]
            cells += [fmt_number(r.metrics.get(k)) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        arrows = ", ".join(f"{METRICS[k].header} = `{k}` ({METRICS[k].better})" for k in keys)
        lines += ["", f"Keys (direction of collapse): {arrows}."]
        parts.append("\n".join(lines))
    parts += [g.markdown() for g in ufm_grids(results)]
    return "\n\n".join(parts) + "\n"


REPEATS_SHOWN = 2
"""A warning that three or more results share is one line naming this many of them."""


def warning_lines(results: Sequence[Result]) -> list[str]:
    """`warning: SOURCE: message` per result and warning, in order; a message shared by more
    than REPEATS_SHOWN results is one line (`warning: A, B and 6 more: message`)."""
    sources: dict[str, list[str]] = {}
    for r in results:
        for w in r.warnings:
            sources.setdefault(w, []).append(r.source)
    out = []
    for message, where in sources.items():
        if len(where) > REPEATS_SHOWN:
            shown = ", ".join(where[:REPEATS_SHOWN])
            out.append(
                visible(f"warning: {shown} and {len(where) - REPEATS_SHOWN} more: {message}")
            )
        else:
            out += [visible(f"warning: {source}: {message}") for source in where]
    return out


# ---------------------------------------------------------------------------------------------
# Runs: the runs table (--by run), trajectories (--by epoch) and the matched comparison.
# Each view is built once as a `Grid` of strings and rendered as a rich table or Markdown; CSV
# and JSON carry the raw numbers.


class Grid:
    """A titled table of display strings with right-aligned numeric columns and a caption."""

    def __init__(self, title: str, headers: list[str], numeric_from: int, caption: str = ""):
        self.title = title
        self.headers = headers
        self.numeric_from = numeric_from
        self.rows: list[list[str]] = []
        self.caption = caption

    def table(self) -> Table:
        table = Table(title=visible(self.title))
        for i, header in enumerate(self.headers):
            numeric = i >= self.numeric_from
            table.add_column(
                visible(header), justify="right" if numeric else "left", no_wrap=numeric
            )
        for row in self.rows:
            table.add_row(*(visible(c) for c in row))
        if self.caption:
            table.caption = _rich_lines(self.caption)
            table.caption_justify = "left"
        return table

    def markdown(self) -> str:
        n = len(self.headers)
        head = " | ".join(md_cell(h) for h in self.headers)
        lines = [f"**{md_cell(self.title)}**", "", "| " + head + " |"]
        lines.append(
            "|" + "|".join("---:" if i >= self.numeric_from else "---" for i in range(n)) + "|"
        )
        lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in self.rows]
        if self.caption:
            lines += ["", "  \n".join(md_cell(line) for line in self.caption.split("\n"))]
        return "\n".join(lines)


def print_grids(
    grids: Sequence[Grid],
    *,
    file: IO[str] | None = None,
    width: int | None = None,
    color: bool | None = None,
) -> None:
    _print_rich([g.table() for g in grids], file=file, width=width, color=color)


def grids_text(grids: Sequence[Grid], width: int) -> str:
    buf = io.StringIO()
    print_grids(grids, file=buf, width=width, color=False)
    return buf.getvalue()


def grids_markdown(grids: Sequence[Grid]) -> str:
    return "\n\n".join(g.markdown() for g in grids) + "\n"


# Keys where lower is better but that measure no collapse: calibration and the fit's error.
_LOWER_IS_BETTER = frozenset((*CALIBRATION_KEYS, "mse"))


def legend(keys: Sequence[str]) -> str:
    """Each header's key, grouped by what its direction means."""

    def named(group: Sequence[str]) -> str:
        return ", ".join(f"{METRICS[k].header}={k}" for k in group)

    lower = [k for k in keys if METRICS[k].better == "lower"]
    groups = (
        ("lower is more collapsed", [k for k in lower if k not in _LOWER_IS_BETTER]),
        ("lower is better", [k for k in lower if k in _LOWER_IS_BETTER]),
        ("higher is better", [k for k in keys if METRICS[k].better == "higher"]),
        ("parameters", [k for k in keys if METRICS[k].better == "-"]),
    )
    return "\n".join(f"{title}: {named(group)}" for title, group in groups if group)


def print_ufm(reports: Sequence[dict[str, Any]], width: int | None = None) -> None:
    """One table per UFM report: quantity | closed form | numerical (rows from render.ufm)."""

    tables = []
    for rep in reports:
        table = Table(title=report_title(rep), title_justify="left")
        table.add_column("quantity")
        table.add_column("closed form", justify="right")
        table.add_column("numerical", justify="right")
        for label, closed, numerical in report_rows(rep):
            table.add_row(label, closed, numerical)
        tables.append(table)
    _print_rich(tables, file=None, width=width, color=None)


# ---------------------------------------------------------------------------------------------
# Distance to the UFM optimum (Result.ufm, computed by ncinspect.ufm.distance.ufm_distance)


def ufm_grids(results: Sequence[Result]) -> list[Grid]:
    """One 'quantity | UFM optimum | measured | measured / UFM' grid per result with a UFM block;
    the caveat under the last one."""

    grids = []
    for r in results:
        if r.ufm is None:
            continue
        grid = Grid(
            distance_title(r, r.ufm),
            ["quantity", "UFM optimum", "measured", "measured / UFM"],
            numeric_from=1,
            caption=distance_caption(r.ufm),
        )
        grid.rows = [list(row) for row in distance_rows(r.ufm)]
        grids.append(grid)
    if grids:
        grids[-1].caption += f"\ncaveat: {UFM_CAVEAT}"
    return grids
