"""`ncinspect compare`: two runs at matched values of one metric (e.g. NC2 at equal NC1), or
layer by layer at matched values of it on their final layers (`--by layer`).

Owns: the compare command's options and output choice. Never matches or interpolates itself
(`ncinspect.runs.compare_runs`, `ncinspect.depthcompare.compare_layers`) or formats a number
(`ncinspect.render`).
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ncinspect.cli.common import (
    DEFAULT_AT,
    Format,
    KeysOpt,
    ManifestOpt,
    guarded,
    parse_dump_keys,
    parse_metrics,
    write_output,
)
from ncinspect.errors import UsageError, visible

if TYPE_CHECKING:
    from ncinspect.metrics.results import Result

app = typer.Typer()


class CompareBy(str, Enum):
    """`compare --by`: the runs' ordinary stores, or their layer stores layer by layer."""

    run = "run"
    layer = "layer"


@app.command()
def compare(
    run_a: Annotated[
        Path, typer.Argument(help="A run: a directory of stores (as extract writes).")
    ],
    run_b: Annotated[Path, typer.Argument(help="The run to compare with it.")],
    at: Annotated[
        str | None,
        typer.Option(
            help="The metric to match the runs at (default: nc1 for classification runs, nrc1 "
            "for regression runs); with --by layer, its value at each run's final layer."
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            "-m",
            help="Comma-separated keys to compare (default: the main ones; with --by layer, "
            "nc1,nc2_etf_means, or nrc1,nrc1_centered for regression).",
        ),
    ] = None,
    levels: Annotated[
        str | None,
        typer.Option(help="Comma-separated levels of --at (default: 5 inside both runs' range)."),
    ] = None,
    n_levels: Annotated[int, typer.Option(help="How many default levels.", min=1)] = 5,
    split: Annotated[
        str | None,
        typer.Option(
            help="The split to compare (e.g. test); needed when a run holds more than one, "
            "else that run's only split.",
        ),
    ] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
    plot_dir: Annotated[
        Path | None, typer.Option("--plot", help="Also draw the matched panel into this directory.")
    ] = None,
    width: Annotated[int | None, typer.Option(help="Table width in characters.")] = None,
    manifest: ManifestOpt = None,
    keys: KeysOpt = None,
    by: Annotated[
        CompareBy,
        typer.Option(
            "--by",
            help="run: the runs' ordinary stores. layer: their layer stores (extract --layers), "
            "layer by layer where their final layers (the last in model order, the head's "
            "input) first reach each level of --at: a table per level, a row per layer both "
            "runs have (in model order; the others named in a note), each metric in A, in B "
            "and B - A, read between the checkpoints around the crossing at the fraction found "
            "in log --at (linear in epoch; the --at metric itself in log). Not with --plot.",
        ),
    ] = CompareBy.run,
) -> None:
    """Compare two runs at matched values of a metric (e.g. NC2 at equal NC1), and how fast
    each reaches those levels."""

    def body() -> None:
        import json

        from ncinspect.api import analyze
        from ncinspect.render import runviews as views
        from ncinspect.render import tables as rep
        from ncinspect.runs import compare_runs, comparison_json, group_runs

        chosen = parse_metrics(metric)
        dump_keys = parse_dump_keys(keys)
        level_values = None
        if levels is not None:
            try:
                level_values = [float(x) for x in levels.split(",") if x.strip()]
            except ValueError:
                raise UsageError(
                    f"--levels: expected numbers like 1,0.1,0.01, got {levels!r}"
                ) from None
        if by is CompareBy.layer:
            if plot_dir is not None:
                raise UsageError("--plot draws the matched panel of --by run; not with --by layer")
            _compare_layers(
                (run_a, run_b), at, chosen, level_values, n_levels, split, manifest, dump_keys,
                format, output, width,
            )  # fmt: skip
            return
        pair = []
        for path in (run_a, run_b):
            left_out: list[str] = []
            results = analyze([path], manifest=manifest, keys=dump_keys, left_out=left_out)
            if not results and left_out:
                raise UsageError(
                    f"{path} holds layer stores (extract --layers) only: compare them with "
                    "--by layer"
                )
            pair.append(_one_run(path, group_runs(_one_split(path, results, split))))
        a, b = pair
        _tell_apart(a, b, run_a, run_b)
        matched_at = at or DEFAULT_AT.get(a.task, "nc1")
        comparison = compare_runs(a, b, matched_at, chosen, level_values, n_levels)
        if plot_dir is not None:
            from ncinspect.render.plots import plot_matched

            for path in plot_matched(comparison, plot_dir):
                print(f"wrote {visible(path)}", file=sys.stderr)
        grids = views.comparison_grids(comparison)
        if format is Format.table and output is None:
            rep.print_grids(grids, width=width)
            return
        render = {
            Format.json: lambda: json.dumps(comparison_json(comparison), indent=2, allow_nan=False),
            Format.csv: lambda: views.comparison_csv(comparison),
            Format.markdown: lambda: rep.grids_markdown(grids),
            Format.table: lambda: rep.grids_text(grids, width or 160),
        }
        write_output(render[format](), output)

    guarded(body)


def _one_split(path: Path, results: list[Result], split: str | None) -> list[Result]:
    """The results of `split`, or of the only split there is; never two splits mixed."""
    present = list(dict.fromkeys(r.split for r in results))
    names = ", ".join("(none)" if s is None else s for s in present)
    if split is not None:
        chosen = [r for r in results if r.split == split]
        if results and not chosen:
            raise UsageError(f"{path}: no stores of split {split!r}; its splits: {names}")
        return chosen
    if len(present) > 1:
        raise UsageError(f"{path}: holds more than one split ({names}); choose one with --split")
    return results


def _compare_layers(
    paths: tuple[Path, Path],
    at: str | None,
    chosen: list[str] | None,
    levels: list[float] | None,
    n_levels: int,
    split: str | None,
    manifest: Path | None,
    dump_keys: dict[str, str] | None,
    format: Format,
    output: Path | None,
    width: int | None,
) -> None:
    """`--by layer`: each path's layer stores as one run (`ncinspect.depthcompare.layer_runs`),
    compared by `compare_layers`, rendered by `render.depthcompare` (JSON: `layer_comparison_json`;
    with CSV, which has no caption, the notes go to stderr)."""
    import json

    from ncinspect.api import analyze
    from ncinspect.depthcompare import compare_layers, layer_comparison_json, layer_runs
    from ncinspect.render import depthcompare as views
    from ncinspect.render import tables as rep

    pair = []
    for path in paths:
        results = analyze([path], manifest=manifest, keys=dump_keys, layers=True)
        if not results:
            raise UsageError(
                f"--by layer: no layer store found in {path}; write them with extract --layers"
            )
        pair.append(_one_run(path, layer_runs(_one_split(path, results, split))))
    a, b = pair
    _tell_apart(a, b, paths[0], paths[1])
    comparison = compare_layers(a, b, at or DEFAULT_AT.get(a.task, "nc1"), chosen, levels, n_levels)
    grids = views.layer_comparison_grids(comparison)
    if format is Format.table and output is None:
        rep.print_grids(grids, width=width)
        return
    if format is Format.csv:
        for note in comparison.notes:
            print(f"note: {visible(note)}", file=sys.stderr)
    render = {
        Format.json: lambda: json.dumps(
            layer_comparison_json(comparison), indent=2, allow_nan=False
        ),
        Format.csv: lambda: views.layer_comparison_csv(comparison),
        Format.markdown: lambda: rep.grids_markdown(grids),
        Format.table: lambda: rep.grids_text(grids, width or 160),
    }
    write_output(render[format](), output)


def _one_run(path: Path, runs: list[Any]) -> Any:
    """The one run `path` holds (a `runs.Run` or a `depthcompare.LayerRun`); UsageError else."""
    if len(runs) != 1:
        names = ", ".join(r.name for r in runs)
        raise UsageError(f"{path}: expected one run, found {len(runs)} ({names})")
    return runs[0]


def _tell_apart(a: Any, b: Any, path_a: Path, path_b: Path) -> None:
    """Two runs that would show under one name get distinct ones: their keys' shortest
    distinct names (seed0/ce and seed1/ce), else the second path as given."""
    from ncinspect.runs import run_names

    if a.name == b.name and a.key != b.key:
        distinct = run_names([a.key, b.key])
        a.name, b.name = distinct[a.key], distinct[b.key]
    if a.name == b.name and path_a.resolve() != path_b.resolve():
        b.name = str(path_b)
