"""`ncinspect plot`: metric-vs-epoch panels, NRC3-vs-gamma curves, the matched panel and the
reliability diagrams (`--reliability`, `ncinspect.render.calibration_plots`).

Owns: the plot command's options. Never draws itself (`ncinspect.render.plots`, which needs the
`plot` extra) or computes a metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ncinspect.cli.common import (
    DEFAULT_AT,
    GroupBy,
    KeysOpt,
    ManifestOpt,
    PathsArg,
    SplitOpt,
    guarded,
    parse_dump_keys,
    parse_labels,
    parse_metrics,
    parse_splits,
)
from ncinspect.errors import UsageError, visible

app = typer.Typer()


@app.command()
def plot(
    paths: PathsArg,
    out: Annotated[Path, typer.Option("--out", help="Directory for the figures.")] = Path("plots"),
    metrics: Annotated[
        str | None, typer.Option("--metrics", "-m", help="Comma-separated keys to draw.")
    ] = None,
    formats: Annotated[
        str, typer.Option("--formats", help="Comma-separated: png, svg, pdf.")
    ] = "png,svg",
    compare_runs_: Annotated[
        str | None,
        typer.Option(
            "--compare", help="A,B: also draw the matched panel of runs A and B (at --at)."
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(help="The metric --compare matches at (default: nc1, nrc1 for regression)."),
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="RUN=TEXT: a legend label (repeatable).")
    ] = None,
    manifest: ManifestOpt = None,
    keys: KeysOpt = None,
    split: SplitOpt = None,
    nc_split: Annotated[
        str | None,
        typer.Option(
            "--nc-split",
            help="With --eval-split: also draw NC1 against NC2 (ETF of the means) on this split, "
            "each checkpoint coloured by its accuracy on the other (paired_nc1_nc2).",
        ),
    ] = None,
    eval_split: Annotated[
        str | None, typer.Option("--eval-split", help="The split that colours the points.")
    ] = None,
    group_by: Annotated[
        GroupBy,
        typer.Option(
            "--group-by",
            help="label: one line per group of runs that differ only by seed (mean, with a "
            "band of one sample std).",
        ),
    ] = GroupBy.run,
    reliability: Annotated[
        bool,
        typer.Option(
            "--reliability",
            help="Also draw each run's final checkpoint's reliability diagram before and after "
            "temperature scaling (reliability.<fmt>; classification stores with logits).",
        ),
    ] = False,
    calibrate_on: Annotated[
        str | None,
        typer.Option(
            "--calibrate-on",
            help="Fit each checkpoint's temperature on its store of this split (as report).",
        ),
    ] = None,
) -> None:
    """Draw metric-vs-epoch panels (one line per run); for regression runs NRC3-vs-gamma, the
    principal components (regression_components) and the NRC3 gamma by epoch
    (nrc3_gamma_epochs); optionally the matched NC2-vs-NC1 panel. Needs the `plot` extra
    (matplotlib)."""

    def body() -> None:
        from ncinspect.api import analyze, check_splits
        from ncinspect.metrics.keys import keys_for
        from ncinspect.render.plots import plot_matched, plot_runs
        from ncinspect.runs import compare_runs, group_runs

        chosen = parse_metrics(metrics)
        fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
        splits = parse_splits(split)
        paired = nc_split is not None or eval_split is not None
        every_result = analyze(
            paths,
            manifest=manifest,
            keys=parse_dump_keys(keys),
            calibrate_on=calibrate_on,
            splits=None if paired else splits,
        )
        # --split chooses what the run panels draw; the paired panel takes its own two splits.
        results = every_result
        if splits is not None and paired:
            check_splits(splits, [r.split for r in every_result])
            results = [r for r in every_result if r.split in splits]
        runs = group_runs(results, parse_labels(label))
        if group_by is GroupBy.label:
            from ncinspect.render.plots import plot_groups
            from ncinspect.seeds import group_seeds

            every = sorted({k for run in runs for k in keys_for(run.task)})
            written = plot_groups(group_seeds(runs, every), out, chosen, fmts)
        else:
            from ncinspect.render.regression_plots import plot_regression_panels

            written = plot_runs(runs, out, chosen, fmts)
            written += plot_regression_panels(runs, out, chosen, fmts)
        if compare_runs_ is not None:
            names = compare_runs_.split(",")
            by_name = {r.name: r for r in runs}
            missing = [n for n in names if n not in by_name]
            if len(names) != 2 or missing:
                raise UsageError(
                    f"--compare: expected two run names A,B; runs: {', '.join(by_name)}"
                )
            a, b = by_name[names[0]], by_name[names[1]]
            comparison = compare_runs(a, b, at or DEFAULT_AT.get(a.task, "nc1"))
            written += plot_matched(comparison, out, fmts)
        if nc_split is not None or eval_split is not None:
            if nc_split is None or eval_split is None:
                raise UsageError("--nc-split and --eval-split go together")
            from ncinspect.paired import pair_splits
            from ncinspect.render.plots import build_paired_figure, save_figure
            from ncinspect.runs import run_names

            pairs = pair_splits(every_result, nc_split, eval_split)
            figure = build_paired_figure(pairs, run_names(p.run for p in pairs))
            written += save_figure(figure, out, "paired_nc1_nc2", fmts)
        if reliability:
            from ncinspect.render.calibration_plots import plot_reliability

            written += plot_reliability(runs, out, fmts)
        for path in written:
            print(visible(path))

    guarded(body)
