"""`ncinspect plot`: metric-vs-epoch panels, NRC3-vs-gamma curves, the matched panel, the
reliability diagrams (`--reliability`, `ncinspect.render.calibration_plots`) and collapse through
depth (`--by layer`, `ncinspect.render.depth_plots`).

Owns: the plot command's options. Never draws itself (`ncinspect.render.plots`, which needs the
`plot` extra) or computes a metric.
"""

from __future__ import annotations

from enum import Enum
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


class PlotBy(str, Enum):
    """`plot --by`: the runs across their checkpoints, or the layer stores through depth."""

    epoch = "epoch"
    layer = "layer"


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
    by: Annotated[
        PlotBy,
        typer.Option(
            "--by",
            help="epoch: the figures above, of the ordinary stores. layer: the layer stores of "
            "extract --layers only: <task>_depth.<fmt> (a panel per metric, default nc1, "
            "separation_fuzziness, nc1_cdnv, nc2_etf_means, ncc_accuracy, against the layers "
            "in model order; a line per run at its final checkpoint, or a line per checkpoint "
            "coloured by epoch when the paths hold one run) and "
            "<task>_depth_heatmap_<key>.<fmt> (the first --metrics key, default nc1, by "
            "checkpoint and layer, a panel per run; hatched: undefined). Not with --compare, "
            "--at, --nc-split/--eval-split, --group-by label, --reliability or --calibrate-on.",
        ),
    ] = PlotBy.epoch,
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
        if by is PlotBy.layer:
            _check_layer_view(
                {
                    "--compare": compare_runs_ is not None,
                    "--at": at is not None,
                    "--nc-split/--eval-split": paired,
                    "--group-by label": group_by is GroupBy.label,
                    "--reliability": reliability,
                    "--calibrate-on": calibrate_on is not None,
                }
            )
            _plot_layers(paths, out, chosen, fmts, splits, label, manifest, keys)
            return
        left_out: list[str] = []
        every_result = analyze(
            paths,
            manifest=manifest,
            keys=parse_dump_keys(keys),
            calibrate_on=calibrate_on,
            splits=None if paired else splits,
            left_out=left_out,
        )
        if not every_result and left_out:
            where = ", ".join(map(str, paths))
            raise UsageError(
                f"no feature store or dump found in {where} but layer stores (extract "
                "--layers): plot them with --by layer"
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


def _check_layer_view(others: dict[str, bool]) -> None:
    """`--by layer` draws each checkpoint's layers, not runs across epochs or splits: the other
    views' options (by whether given) are refused with it, the first given named."""
    found = [name for name, given in others.items() if given]
    if found:
        raise UsageError(
            "--by layer draws each checkpoint's layers, not runs across epochs or splits: "
            f"{found[0]} does not apply to it"
        )


def _plot_layers(
    paths: list[Path],
    out: Path,
    chosen: list[str] | None,
    fmts: tuple[str, ...],
    splits: list[str] | None,
    label: list[str] | None,
    manifest: Path | None,
    keys: str | None,
) -> None:
    """`--by layer`: the layer stores' depth profiles (`ncinspect.depth`), drawn by
    `render.depth_plots.plot_depth`; the files written, one per line."""
    from ncinspect.api import analyze
    from ncinspect.depth import depth_profiles, label_profiles
    from ncinspect.render.depth_plots import plot_depth

    results = analyze(
        paths, manifest=manifest, keys=parse_dump_keys(keys), splits=splits, layers=True
    )
    if not results:
        where = ", ".join(map(str, paths))
        raise UsageError(
            f"--by layer: no layer store found in {where}; write them with extract --layers"
        )
    profiles = depth_profiles(results)
    label_profiles(profiles, parse_labels(label))
    for path in plot_depth(profiles, out, chosen, fmts):
        print(visible(path))
