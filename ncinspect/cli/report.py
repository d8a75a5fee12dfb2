"""`ncinspect report`: the collapse metrics of stores and dumps, per store, per run or per epoch.

Owns: the report command's options and how its views (`--by checkpoint|run|epoch|layer`) pick
a renderer. Never computes a metric (`ncinspect.api.analyze`), groups runs itself
(`ncinspect.runs`) or formats a number (`ncinspect.render.tables`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ncinspect.cli.common import (
    By,
    Checkpoints,
    Format,
    GlobalMean,
    GroupBy,
    KeysOpt,
    ManifestOpt,
    PathsArg,
    SplitOpt,
    TargetCov,
    TemperatureMethod,
    UfmReduction,
    guarded,
    parse_dump_keys,
    parse_labels,
    parse_metrics,
    parse_pair,
    parse_splits,
    write_output,
)
from ncinspect.errors import NcInspectError, UsageError, visible

app = typer.Typer()


@app.command()
def report(
    paths: PathsArg,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            "-m",
            help="Comma-separated metric keys to show, or 'all'. Default: every key in json/csv, "
            "the main ones in tables.",
        ),
    ] = None,
    gamma: Annotated[
        float | None,
        typer.Option(help="Regression: fix the NRC3 gamma instead of searching it.", min=0.0),
    ] = None,
    ufm_lambdas: Annotated[
        str | None,
        typer.Option(
            "--ufm-lambdas",
            help="LAMBDA_H,LAMBDA_W of the unconstrained feature model: the distance-to-the-UFM-"
            "optimum block uses them (default: lambda_W = lambda_H = the provenance's "
            "weight_decay); regression: NRC3 also uses gamma = LAMBDA_H * LAMBDA_W.",
        ),
    ] = None,
    ufm_alpha: Annotated[
        float | None,
        typer.Option(
            "--alpha",
            help="Classification: label smoothing for the UFM block, for every run (default: "
            "each run's label_smoothing from --manifest, the provenance or the configs, else 0).",
        ),
    ] = None,
    ufm_n: Annotated[
        float | None,
        typer.Option(
            "--ufm-n",
            help="Classification: training samples per class n for the UFM block (default: the "
            "run's training-set size / K; N/K of the analysed store only for a train split).",
        ),
    ] = None,
    ece_bins: Annotated[
        int,
        typer.Option(
            "--ece-bins",
            help="Calibration: equal-width confidence bins of ece, mce, adaece.",
            min=1,
            max=1000,
        ),
    ] = 15,
    no_calibration: Annotated[
        bool,
        typer.Option(
            "--no-calibration",
            help="Leave out the calibration keys (a pass over the stored logits, and 2 to 9 "
            "more for the temperature when they exceed 32 MiB).",
        ),
    ] = False,
    temperature: Annotated[
        TemperatureMethod,
        typer.Option(
            "--temperature",
            help="Calibration: nll fits the temperature minimising NLL (Guo et al. 2017); "
            "grid-ece takes the grid temperature 0.1, 0.2, ..., 10 with the lowest ECE (the "
            "label-smoothing study's code).",
        ),
    ] = TemperatureMethod.nll,
    calibrate_on: Annotated[
        str | None,
        typer.Option(
            "--calibrate-on",
            help="Calibration: fit each checkpoint's temperature on its store of this split "
            "(e.g. val) and report ece_ts of every other split at it (default: each store fits "
            "its own; info.calibration_split says which).",
        ),
    ] = None,
    global_mean: Annotated[
        GlobalMean,
        typer.Option(
            "--global-mean",
            help="Classification: weighted (the sample mean, Papyan et al.) or unweighted (the "
            "mean of the class means, the authors' code); recorded in info.global_mean.",
        ),
    ] = GlobalMean.weighted,
    target_cov: Annotated[
        TargetCov,
        typer.Option(
            "--target-cov",
            help="Regression NRC3: the centred target covariance, or uncentred (1/N) sum y y^T "
            "(the Carla/UTKFace code's, for bias-free heads).",
        ),
    ] = TargetCov.centred,
    ufm_reduction: Annotated[
        UfmReduction | None,
        typer.Option(
            "--ufm-reduction",
            help="Regression: how the training loss reduced the squared errors, for mapping "
            "weight decay to the UFM penalties (mean: MSELoss's mean over N*T, lambda = T*wd/2; "
            "sum_targets: lambda = wd/2; half_sum: lambda = wd). Default: the run's config, "
            "else mean.",
        ),
    ] = None,
    no_ufm: Annotated[
        bool, typer.Option("--no-ufm", help="Leave out the distance-to-the-UFM-optimum block.")
    ] = False,
    drop_nonfinite: Annotated[
        bool,
        typer.Option(
            "--drop-nonfinite", help="Compute from the finite rows when features hold NaN/Inf."
        ),
    ] = False,
    chunk_rows: Annotated[
        int | None,
        typer.Option(help="Rows read per chunk (default: sized to the store's chunks).", min=1),
    ] = None,
    no_saved_sums: Annotated[
        bool,
        typer.Option(
            "--no-saved-sums",
            help="Compute the class sums from the features (two passes) even where the store "
            "saved them.",
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file (atomically) instead of stdout."),
    ] = None,
    width: Annotated[
        int | None, typer.Option(help="Table width in characters (default: the terminal's).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print warnings.")] = False,
    by: Annotated[
        By,
        typer.Option(
            "--by",
            help="checkpoint: a row per store; run: a row per run at its final checkpoint; "
            "epoch: each run's metrics across its checkpoints; auto: for tables and Markdown, "
            "a row per run with its first-to-final change when some run has several "
            "checkpoints (else a row per store); for json and csv, a row per store; layer: "
            "the layer stores of extract --layers (left out of every other view), a table per "
            "checkpoint with a row per layer in model order and the law of data separation's "
            "fit (decay rho and R^2).",
        ),
    ] = By.auto,
    checkpoints: Annotated[
        Checkpoints | None,
        typer.Option(
            "--checkpoints",
            help="With --by layer: final (the default) shows each run's final checkpoint per "
            "split; all shows every checkpoint's layers.",
            show_default=False,
        ),
    ] = None,
    trajectory: Annotated[
        bool, typer.Option("--trajectory", help="Same as --by epoch.", show_default=False)
    ] = False,
    gamma_trajectory: Annotated[
        bool,
        typer.Option(
            "--gamma-trajectory",
            help="Regression: per run, each checkpoint's searched NRC3 gamma, lambda_min, their "
            "ratio and the gamma used (the final checkpoint's, held for the earlier ones).",
            show_default=False,
        ),
    ] = False,
    baseline: Annotated[
        str | None,
        typer.Option(help="With --by run: add each run's ratio to this run's final values."),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(help="RUN=TEXT: a label for a run's legend and table (repeatable)."),
    ] = None,
    manifest: ManifestOpt = None,
    keys: KeysOpt = None,
    split: SplitOpt = None,
    nc_split: Annotated[
        str | None,
        typer.Option(
            "--nc-split",
            help="With --eval-split: one row per checkpoint with the collapse metrics of this "
            "split (e.g. train) beside the accuracy, NC4 and calibration of the other.",
        ),
    ] = None,
    eval_split: Annotated[
        str | None,
        typer.Option("--eval-split", help="The split whose generalisation is shown (e.g. test)."),
    ] = None,
    group_by: Annotated[
        GroupBy,
        typer.Option(
            "--group-by",
            help="label: runs whose hyper-parameters agree but for the seed become one group, "
            "shown as mean ± sample std per epoch (--by run: at the final checkpoints; --by "
            "epoch: every epoch).",
        ),
    ] = GroupBy.run,
    min_count: Annotated[
        int,
        typer.Option(
            "--min-count",
            min=1,
            help="Classification: analyse only the rows of the classes with at least this many "
            "(the others count as classes without samples); recorded in info.min_count. Needs "
            "stores with rows (not --stats-only).",
        ),
    ] = 1,
    per_class: Annotated[
        int,
        typer.Option(
            "--per-class",
            min=0,
            help="Classification: show, per store, the N most and N least frequent classes "
            "with their count, recall, NCC recall, within-class variance, mean and weight "
            "norms and cos(w_k, mu_k - mu_G) (each run's final checkpoint unless --checkpoints "
            "all).",
        ),
    ] = 0,
) -> None:
    """Compute the collapse metrics of stores and dumps and print them."""

    def body() -> None:
        from ncinspect.api import analyze
        from ncinspect.render import tables as rep
        from ncinspect.ufm.distance import UfmSettings

        if gamma is not None and ufm_lambdas is not None:
            raise UsageError("--gamma and --ufm-lambdas are alternatives; give one")
        layers = by is By.layer
        _check_class_view(
            per_class,
            min_count,
            {
                "--by run/epoch": by in (By.run, By.epoch) or trajectory,
                "--baseline": baseline is not None,
                "--group-by label": group_by is GroupBy.label,
                "--gamma-trajectory": gamma_trajectory,
                "--nc-split/--eval-split": bool(nc_split or eval_split),
            },
        )
        _check_layer_view(
            layers,
            None if per_class else checkpoints,  # --per-class takes it too
            {
                "--baseline": baseline is not None,
                "--group-by label": group_by is GroupBy.label,
                "--gamma-trajectory": gamma_trajectory,
                "--trajectory": trajectory,
                "--nc-split/--eval-split": bool(nc_split or eval_split),
                "--calibrate-on": calibrate_on is not None,
            },
        )
        if gamma_trajectory:
            _check_gamma_view(nc_split or eval_split, group_by, baseline, by)
        selected = parse_metrics(metrics)
        splits = parse_splits(split)
        if splits is not None and (nc_split is not None or eval_split is not None):
            raise UsageError("--split and --nc-split/--eval-split: the pair names its two splits")
        skipped: list[str] = []
        left_out: list[str] = []
        lambdas = parse_pair(ufm_lambdas, "--ufm-lambdas")
        settings = UfmSettings(
            lambdas=lambdas,
            alpha=ufm_alpha,
            n=ufm_n,
            enabled=not no_ufm,
            reduction=None if ufm_reduction is None else ufm_reduction.value,
        )
        results = analyze(
            paths,
            chunk_rows=chunk_rows,
            drop_nonfinite=drop_nonfinite,
            gamma=gamma,
            ufm_lambdas=lambdas,
            skipped=skipped,
            ufm=settings,
            saved_sums=not no_saved_sums,
            manifest=manifest,
            keys=parse_dump_keys(keys),
            ece_bins=ece_bins,
            calibration=not no_calibration,
            temperature_method=temperature.value.replace("-", "_"),
            calibrate_on=calibrate_on,
            splits=splits,
            global_mean=global_mean.value,
            target_cov=target_cov.value,
            layers=layers,
            left_out=left_out,
            min_count=min_count,
            per_class=per_class,
        )
        if not quiet:
            for line in skipped + rep.warning_lines(results):
                print(visible(line), file=sys.stderr)
        where = ", ".join(map(str, paths))
        if not results and layers:
            raise UsageError(
                f"--by layer: no layer store found in {where}; write them with extract --layers"
            )
        if not results:
            also = " but layer stores (extract --layers): see them with --by layer"
            found = f"no feature store or dump found in {where}"
            raise NcInspectError(found + also if left_out else found)
        if per_class:
            _render_per_class(results, checkpoints, format, output, width)
            return
        if layers:
            _render_layers(
                results, checkpoints, selected, parse_labels(label), format, output, width
            )
            return
        if gamma_trajectory:
            _render_gamma(results, parse_labels(label), format, output, width)
            return
        if nc_split is not None or eval_split is not None:
            if nc_split is None or eval_split is None:
                raise UsageError("--nc-split and --eval-split go together")
            if group_by is GroupBy.label or by not in (By.auto, By.checkpoint):
                raise UsageError("--nc-split/--eval-split show one row per checkpoint")
            _render_pairs(results, nc_split, eval_split, selected, format, output, width)
            return
        if group_by is GroupBy.label:
            group_view = By.epoch if trajectory else (By.run if by is By.auto else by)
            if group_view is By.checkpoint or baseline is not None:
                raise UsageError(
                    "--group-by label needs --by run or --by epoch, without --baseline"
                )
            _render_groups(
                results, group_view, selected, parse_labels(label), format, output, width
            )
            return
        view = _view(By.epoch if trajectory else by, results, format, baseline)
        if baseline is not None and view is not By.run:
            raise UsageError("--baseline needs --by run")
        if view is not By.checkpoint:
            _render_runs(
                results, view, selected, baseline, parse_labels(label), format, output, width
            )
            return
        if format is Format.table and output is None:
            rep.print_tables(results, selected, width=width)
            return
        render: dict[Format, Callable[..., str]] = {
            Format.json: rep.to_json,
            Format.csv: rep.to_csv,
            Format.markdown: rep.to_markdown,
            Format.table: lambda res, sel: rep.table_text(res, sel, width or 160),
        }
        write_output(render[format](results, selected), output)

    guarded(body)


def _check_class_view(per_class: int, min_count: int, others: dict[str, bool]) -> None:
    """`--per-class` is a view of its own (a table of classes per store): `others`, the other
    views' options by whether given, are refused with it; `--min-count` is refused with
    `--nc-split/--eval-split` (the generalisation NC4 reads every row of the other split)."""
    found = [name for name, given in others.items() if given]
    if per_class and found:
        raise UsageError(
            f"--per-class shows a table of classes per store: {found[0]} does not apply to it"
        )
    if min_count > 1 and others["--nc-split/--eval-split"]:
        raise UsageError(
            "--min-count and --nc-split/--eval-split: the evaluation split's NC4 reads every "
            "row; give one"
        )


def _render_per_class(
    results: list[Any],
    checkpoints: Checkpoints | None,
    format: Format,
    output: Path | None,
    width: int | None,
) -> None:
    """`--per-class`: each run's final checkpoint (per split) unless `--checkpoints all`, as
    grids (`render.perclass`), JSON or CSV."""
    from ncinspect.render import perclass
    from ncinspect.runs import group_runs

    shown = [r for r in results if r.per_class is not None]
    if not shown:
        raise UsageError("--per-class: no classification store among the results")
    if checkpoints is not Checkpoints.all:
        finals = {id(run.final) for run in group_runs(shown)}
        shown = [r for r in shown if id(r) in finals]
    if format is Format.json:
        write_output(perclass.per_class_json(shown), output)
    elif format is Format.csv:
        write_output(perclass.per_class_csv(shown), output)
    else:
        _write_grids(perclass.per_class_grids(shown), format, output, width)


def _check_layer_view(
    layers: bool, checkpoints: Checkpoints | None, others: dict[str, bool]
) -> None:
    """`--by layer` is a view of its own (each checkpoint's layers, not runs over epochs or
    across splits): `others`, the other views' options by whether given, are refused with it
    (the first given named); `--checkpoints` applies to it alone."""
    found = [name for name, given in others.items() if given]
    if layers and found:
        raise UsageError(
            "--by layer shows each checkpoint's layers, not runs across epochs or splits: "
            f"{found[0]} does not apply to it"
        )
    if not layers and checkpoints is not None:
        raise UsageError(
            f"--checkpoints {checkpoints.value} applies to --by layer and --per-class only"
        )


def _render_layers(
    results: list[Any],
    checkpoints: Checkpoints | None,
    selected: list[str] | None,
    labels: dict[str, str],
    format: Format,
    output: Path | None,
    width: int | None,
) -> None:
    """`--by layer`: the depth profiles (`ncinspect.depth`), each run's final checkpoint unless
    `--checkpoints all`, as grids (`render.depthviews`), JSON or CSV."""
    from ncinspect.depth import depth_profiles, final_profiles, label_profiles
    from ncinspect.render import depthviews

    profiles = depth_profiles(results)
    if checkpoints is not Checkpoints.all:
        profiles = final_profiles(profiles)
    label_profiles(profiles, labels)
    if format is Format.json:
        write_output(depthviews.depth_json(profiles, selected), output)
    elif format is Format.csv:
        write_output(depthviews.depth_csv(profiles, selected), output)
    else:
        _write_grids(depthviews.depth_grids(profiles, selected), format, output, width)


def _view(by: By, results: list[Any], format: Format, baseline: str | None) -> By:
    """`--by auto`: the summary of each run for tables (a screenful, not one row per
    checkpoint), every store for json and csv, the run view when --baseline asks for it."""
    if by is not By.auto:
        return by
    if baseline is not None:
        return By.run
    if format in (Format.json, Format.csv):
        return By.checkpoint
    from ncinspect.metrics.results import run_key

    keys = [(run_key(r), r.split) for r in results]
    return By.auto if len(set(keys)) < len(keys) else By.checkpoint


def _render_pairs(
    results: list[Any],
    nc_split: str,
    eval_split: str,
    selected: list[str] | None,
    format: Format,
    output: Path | None,
    width: int | None,
) -> None:
    import json

    from ncinspect._version import __version__
    from ncinspect.metrics.keys import EVALUATION_KEYS, TABLE_DEFAULT, keys_for
    from ncinspect.paired import pair_record, pair_splits
    from ncinspect.render import runviews as views
    from ncinspect.runs import run_names

    pairs = pair_splits(results, nc_split, eval_split)
    table_like = format in (Format.table, Format.markdown)
    keys: dict[str, tuple[list[str], list[str]]] = {}
    for task in {p.any.task for p in pairs}:
        every = keys_for(task)
        shown = [k for k in every if k in selected] if selected else None
        default = TABLE_DEFAULT[task] if table_like else every
        evaluation = EVALUATION_KEYS[task]
        nc = [k for k in (shown or default) if k not in evaluation]
        ev = [k for k in (shown or every) if k in evaluation]
        if table_like and not selected:
            ev = [k for k in ev if k in EVALUATION_KEYS["table"]]
        keys[task] = (nc, ev)
    if format is Format.json:
        names = run_names(p.run for p in pairs)
        records = []
        for p in pairs:
            nc, ev = keys[p.any.task]
            records.append({**pair_record(p, nc, ev), "run": names[p.run], "task": p.any.task})
        doc = {
            "ncinspect_version": __version__,
            "nc_split": nc_split,
            "eval_split": eval_split,
            "pairs": records,
        }
        write_output(json.dumps(doc, indent=2, allow_nan=False), output)
        return
    if format is Format.csv:
        write_output(views.pairs_csv(pairs, keys), output)
        return
    grids = views.pair_grids(pairs, keys, nc_split, eval_split)
    _write_grids(grids, format, output, width)


def _render_groups(
    results: list[Any],
    view: By,
    selected: list[str] | None,
    labels: dict[str, str],
    format: Format,
    output: Path | None,
    width: int | None,
) -> None:
    import json

    from ncinspect._version import __version__
    from ncinspect.render import runviews as views
    from ncinspect.render import tables as rep
    from ncinspect.runs import group_runs
    from ncinspect.seeds import group_seeds, groups_json

    runs = group_runs(results, labels)
    tasks = {run.task for run in runs}
    table_like = format in (Format.table, Format.markdown)
    by_task = {task: rep.columns_for(task, selected, table=table_like) for task in tasks}
    groups = group_seeds(runs, [k for keys in by_task.values() for k in keys])
    if format is Format.json:
        doc = {"ncinspect_version": __version__, "groups": groups_json(groups)}
        write_output(json.dumps(doc, indent=2, allow_nan=False), output)
        return
    if format is Format.csv:
        write_output(views.groups_csv(groups, by_task), output)
        return
    if view is By.run:
        grids = views.group_grids(groups, by_task)
    else:
        grids = views.group_trajectory_grids(groups, by_task)
    _write_grids(grids, format, output, width)


def _render_runs(
    results: list[Any],
    view: By,
    selected: list[str] | None,
    baseline: str | None,
    labels: dict[str, str],
    format: Format,
    output: Path | None,
    width: int | None,
) -> None:
    import json

    from ncinspect.metrics.keys import TABLE_DEFAULT, keys_for
    from ncinspect.render import runviews as views
    from ncinspect.render import tables as rep
    from ncinspect.runs import group_runs, runs_json, runs_table

    runs = group_runs(results, labels)
    tasks = {run.task for run in runs}

    def keys(task: str, table: bool) -> list[str]:
        every = keys_for(task)
        if selected:
            return [k for k in every if k in selected]
        return list(TABLE_DEFAULT[task] if table else every)

    table_like = format in (Format.table, Format.markdown)
    if view in (By.run, By.auto):
        chosen = [
            k
            for task in ("classification", "regression")
            if task in tasks
            for k in keys(task, table_like)
        ]
        table = runs_table(runs, chosen, baseline)
        grids = (
            views.runs_grids(table)
            if view is By.run
            else views.summary_grids(runs, table, selected)
        )
        render = {
            Format.json: lambda: json.dumps(runs_json(table), indent=2, allow_nan=False),
            Format.csv: lambda: views.runs_csv(table),
        }
    else:
        by_task = {task: keys(task, table_like) for task in tasks}
        grids = views.trajectory_grids(runs, by_task)
        render = {
            Format.json: lambda: views.trajectory_json(runs, by_task),
            Format.csv: lambda: views.trajectory_csv(runs, by_task),
        }
    render[Format.markdown] = lambda: rep.grids_markdown(grids)
    render[Format.table] = lambda: rep.grids_text(grids, width or 160)
    if format is Format.table and output is None:
        rep.print_grids(grids, width=width)
    else:
        write_output(render[format](), output)


def _check_gamma_view(paired: str | None, group_by: GroupBy, baseline: str | None, by: By) -> None:
    """`--gamma-trajectory` is a view of its own, over every epoch: refused with the others."""
    if paired or group_by is GroupBy.label or baseline:
        raise UsageError(
            "--gamma-trajectory is a view of its own: without --nc-split, --eval-split, "
            "--group-by label and --baseline"
        )
    if by not in (By.auto, By.epoch):
        raise UsageError(f"--gamma-trajectory shows every epoch; found --by {by.value}")


def _render_gamma(
    results: list[Any],
    labels: dict[str, str],
    format: Format,
    output: Path | None,
    width: int | None,
) -> None:
    """`--gamma-trajectory`: one grid per regression run (`runviews.gamma_trajectory_grids`)."""
    from ncinspect.render import runviews as views
    from ncinspect.runs import group_runs

    runs = group_runs(results, labels)
    if format is Format.json:
        write_output(views.gamma_trajectory_json(runs), output)
        return
    if format is Format.csv:
        write_output(views.gamma_trajectory_csv(runs), output)
        return
    grids = views.gamma_trajectory_grids(runs)
    _write_grids(grids, format, output, width)


def _write_grids(grids: list[Any], format: Format, output: Path | None, width: int | None) -> None:
    """Grids as Markdown, as a table on the terminal, or as a table of `width` (160) written to
    `output` (json and csv are each view's own)."""
    from ncinspect.render import tables as rep

    if format is Format.markdown:
        write_output(rep.grids_markdown(grids), output)
    elif output is None:
        rep.print_grids(grids, width=width)
    else:
        write_output(rep.grids_text(grids, width or 160), output)
