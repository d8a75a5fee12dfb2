"""Rendering results: rich tables, JSON, CSV and Markdown. The only module that imports rich.

Owns: how results look (headers, number formatting, legends, grouping by task). Never computes a
metric and never reads a store.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from ncinspect import __version__
from ncinspect.keys import METRICS, TABLE_DEFAULT, keys_for
from ncinspect.results import Result

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


def _labels(r: Result) -> tuple[str, str]:
    src = Path(r.source)
    run = r.run if r.run is not None else src.parent.name or "."
    ckpt = r.checkpoint if r.checkpoint is not None else src.name
    return run, ckpt


def build_tables(results: Sequence[Result], selected: Sequence[str] | None) -> list[Table]:
    tables = []
    for task, rows in by_task(results).items():
        keys = columns_for(task, selected, table=True)
        if not keys:
            continue
        table = Table(title=f"{task} ({len(rows)} source{'s' if len(rows) != 1 else ''})")
        table.add_column("run", no_wrap=True)
        table.add_column("checkpoint", overflow="fold", min_width=10)
        table.add_column("epoch", justify="right", no_wrap=True)
        table.add_column("N", justify="right", no_wrap=True)
        for key in keys:
            header = METRICS[key].header
            table.add_column(header, justify="right", no_wrap=True)
        for r in rows:
            run, ckpt = _labels(r)
            epoch = "-" if r.epoch is None else str(r.epoch)
            values = [fmt_number(r.metrics.get(k)) for k in keys]
            table.add_row(run, ckpt, epoch, str(r.n), *values)
        lower = [f"{METRICS[k].header}={k}" for k in keys if METRICS[k].better == "lower"]
        higher = [f"{METRICS[k].header}={k}" for k in keys if METRICS[k].better == "higher"]
        other = [f"{METRICS[k].header}={k}" for k in keys if METRICS[k].better == "-"]
        legend = []
        if lower:
            legend.append("lower is more collapsed: " + ", ".join(lower))
        if higher:
            legend.append("higher is better: " + ", ".join(higher))
        if other:
            legend.append("parameters: " + ", ".join(other))
        hidden = len(keys_for(task)) - len(keys)
        if hidden and not selected:
            legend.append(f"{hidden} more keys with --metrics all or --format json")
        table.caption = "\n".join(legend)
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
    tables = build_tables(results, selected)

    def make(w: int | None) -> Console:
        return Console(
            file=file,
            width=w,
            no_color=(color is False),
            force_terminal=None if color is None else color,
            highlight=False,
        )

    console = make(width)
    if width is None:
        # Never squeeze numbers into ellipses: widen past a narrow terminal instead.
        ruler = Console(width=10_000, file=io.StringIO())
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


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def to_csv(results: Sequence[Result], selected: Sequence[str] | None = None) -> str:
    keys: list[str] = []
    for task, _ in by_task(results).items():
        keys.extend(columns_for(task, selected, table=False))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*ID_COLUMNS, *keys])
    for r in results:
        rec = r.to_json()
        ids = [_csv_cell(rec[c]) for c in ID_COLUMNS]
        writer.writerow([*ids, *(_csv_cell(r.metrics.get(k)) for k in keys)])
    return buf.getvalue()


def to_markdown(results: Sequence[Result], selected: Sequence[str] | None = None) -> str:
    parts = []
    for task, rows in by_task(results).items():
        keys = columns_for(task, selected, table=False if selected else True)
        head = ["run", "checkpoint", "epoch", "N", *(f"{METRICS[k].header}" for k in keys)]
        lines = [f"**{task}**", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
        for r in rows:
            run, ckpt = _labels(r)
            epoch = "" if r.epoch is None else str(r.epoch)
            cells = [run, ckpt, epoch, str(r.n), *(fmt_number(r.metrics.get(k)) for k in keys)]
            lines.append("| " + " | ".join(cells) + " |")
        arrows = ", ".join(f"{METRICS[k].header} = `{k}` ({METRICS[k].better})" for k in keys)
        lines += ["", f"Keys (direction of collapse): {arrows}."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def warning_lines(results: Sequence[Result]) -> list[str]:
    out = []
    for r in results:
        for w in r.warnings:
            out.append(f"warning: {r.source}: {w}")
    return out
