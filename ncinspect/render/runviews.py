"""Rendering runs: a row per run, each run's trajectory, the default summary, and comparisons.

Owns how `ncinspect.runs` objects look as grids, CSV and JSON: `runs_grids` (a row per run at its
final checkpoint, `report --by run`), `trajectory_grids` (every checkpoint of each run, `--by
epoch`), `summary_grids` (the default table view when a run has several checkpoints: the run rows
plus each run's first-to-final change), `comparison_grids` (`compare`) and
`gamma_trajectory_grids` (each regression checkpoint's searched NRC3 gamma beside the one held,
`report --gamma-trajectory`). Never computes a metric (`ncinspect.runs` does) and formats
numbers with `ncinspect.render.tables`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ncinspect._version import __version__
from ncinspect.errors import UsageError, visible
from ncinspect.metrics.keys import METRICS, keys_for
from ncinspect.metrics.results import checkpoint_name, json_number, jsonable
from ncinspect.render.tables import (
    TASK_ORDER,
    Grid,
    csv_cell,
    fmt_number,
    legend,
    mixed_splits,
    result_labels,
    split_text,
    ufm_grids,
)
from ncinspect.render.ufm import distance_caption, distance_trajectory
from ncinspect.ufm.distance import UFM_CAVEAT

if TYPE_CHECKING:
    from ncinspect.metrics.results import Result
    from ncinspect.paired import Pair
    from ncinspect.runs import Comparison, Run, RunsTable
    from ncinspect.seeds import GroupPoint, SeedGroup

# What the default summary follows from each run's first to its final checkpoint.
SUMMARY_KEYS: dict[str, tuple[str, ...]] = {
    "classification": ("nc1", "accuracy"),
    "regression": ("nrc1", "r2"),
}


def runs_grids(table: RunsTable) -> list[Grid]:
    """`run_grids`, then the final checkpoints' distance to the UFM optimum."""
    return run_grids(table) + ufm_grids([row.final for row in table.rows])


def run_grids(table: RunsTable) -> list[Grid]:
    """One grid per task: a row per run at its final checkpoint; '*' marks each column's best
    (within a split, and a split column, when the rows hold more than one split)."""
    from ncinspect.runs import label_text

    grids = []
    for task in TASK_ORDER:
        rows = [row for row in table.rows if row.task == task]
        if not rows:
            continue
        keys = [k for k in table.keys if k in keys_for(task)]
        with_split = mixed_splits(row.split for row in rows)
        ids = ["run", *(["split"] if with_split else []), "labels"]
        headers = [*ids, "checkpoints", "final", *(METRICS[k].header for k in keys)]
        among = " among runs of its split" if with_split else ""
        caption = legend(keys) + f"\n* best value in its column{among} (final checkpoints)"
        if table.baseline is not None:
            caption += f"\n(xR): ratio to the baseline run {visible(table.baseline)}"
        grid = Grid(f"{task} runs ({len(rows)})", headers, numeric_from=len(ids), caption=caption)
        for row in rows:
            epochs = [e for e in row.epochs if e is not None]
            best = table.best_in_split.get(row.split, {}) if table.best_in_split else table.best
            cells = []
            for k in keys:
                cell = fmt_number(row.final.metrics.get(k))
                if best.get(k) == row.run:
                    cell += "*"
                if row.ratio_to_baseline is not None:
                    ratio = row.ratio_to_baseline.get(k)
                    cell += f" (x{ratio:.3g})" if ratio is not None else " (x-)"
                cells.append(cell)
            final = "-" if row.final.epoch is None else str(row.final.epoch)
            grid.rows.append(
                [
                    row.run,
                    *([split_text(row.split)] if with_split else []),
                    label_text(row.labels) or "-",
                    str(len(epochs) or len(row.epochs)),
                    final,
                    *cells,
                ]
            )
        grids.append(grid)
    return grids


def runs_csv(table: RunsTable) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    label_keys = sorted({k for row in table.rows for k in row.labels})
    ratio_cols = [f"ratio_{k}" for k in table.keys] if table.baseline is not None else []
    with_split = mixed_splits(row.split for row in table.rows)
    writer.writerow(
        [
            "run",
            "task",
            *(["split"] if with_split else []),
            *(csv_cell(k) for k in label_keys),
            "checkpoints",
            "final_epoch",
            *table.keys,
            *ratio_cols,
        ]
    )
    for row in table.rows:
        ratios = row.ratio_to_baseline or {}
        writer.writerow(
            [
                csv_cell(row.run),
                csv_cell(row.task),
                *([csv_cell(row.split)] if with_split else []),
                *(csv_cell(row.labels.get(k)) for k in label_keys),
                len(row.epochs),
                csv_cell(row.final.epoch),
                *(csv_cell(row.final.metrics.get(k)) for k in table.keys),
                *(csv_cell(ratios.get(k)) for k in table.keys if ratio_cols),
            ]
        )
    return buf.getvalue()


def trajectory_grids(runs: Sequence[Run], keys_by_task: dict[str, list[str]]) -> list[Grid]:
    from ncinspect.runs import label_text

    grids = []
    with_split = mixed_splits(run.split for run in runs)
    for run in runs:
        keys = keys_by_task[run.task]
        labels = label_text(run.labels)
        title = f"{run.name}" + (f" ({labels})" if labels else "") + f": {run.task}"
        if with_split:
            title += f", split {split_text(run.split)}"
        grid = Grid(
            title,
            ["epoch", "checkpoint", "N", *(METRICS[k].header for k in keys)],
            numeric_from=2,
            caption=legend(keys),
        )
        for r in run.results:
            grid.rows.append(
                [
                    "-" if r.epoch is None else str(r.epoch),
                    result_labels(r)[1],
                    str(r.n),
                    *(fmt_number(r.metrics.get(k)) for k in keys),
                ]
            )
        grids.append(grid)
    return grids + ufm_trajectory_grids(runs)


def trajectory_json(runs: Sequence[Run], keys_by_task: dict[str, list[str]]) -> str:
    from ncinspect.runs import trajectory

    doc = {
        "ncinspect_version": __version__,
        "runs": [
            {
                "run": run.name,
                "task": run.task,
                "split": run.split,
                "labels": jsonable(run.labels),
                "trajectory": [
                    {**entry, **({"ufm": jsonable(r.ufm)} if r.ufm is not None else {})}
                    for entry, r in zip(
                        trajectory(run, keys_by_task[run.task]), run.results, strict=True
                    )
                ],
            }
            for run in runs
        ],
    }
    return json.dumps(doc, indent=2, allow_nan=False)


def trajectory_csv(runs: Sequence[Run], keys_by_task: dict[str, list[str]]) -> str:
    keys = [k for task in TASK_ORDER for k in keys_by_task.get(task, [])]
    with_split = mixed_splits(run.split for run in runs)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", "task", *(["split"] if with_split else []), "epoch", "source", *keys])
    for run in runs:
        for r in run.results:
            writer.writerow(
                [
                    csv_cell(run.name),
                    csv_cell(run.task),
                    *([csv_cell(run.split)] if with_split else []),
                    csv_cell(r.epoch),
                    csv_cell(r.source),
                    *(csv_cell(r.metrics.get(k)) for k in keys),
                ]
            )
    return buf.getvalue()


def comparison_grids(c: Comparison) -> list[Grid]:
    """Matched values at each level, then the first epoch each run reaches each level."""
    at = METRICS[c.at].header
    name_a, name_b = visible(c.a.name), visible(c.b.name)  # one line each, in the caption too
    headers = [at]
    for k in c.metrics:
        h = METRICS[k].header
        headers += [f"{h} {c.a.name}", f"{h} {c.b.name}", f"{h} diff"]
    caption = (
        f"each run's metrics where {c.at} first reaches the level, interpolated in log {c.at} "
        f"between the checkpoints around the crossing (never extrapolated; n/a: not crossed); "
        f"diff = {name_b} - {name_a}\n" + legend(c.metrics)
    )
    matched = Grid(f"{c.a.name} vs {c.b.name} at matched {c.at}", headers, 0, caption)
    for m in c.levels:
        row = [fmt_number(m.level)]
        for k in c.metrics:
            row += [fmt_number(m.a[k]), fmt_number(m.b[k]), fmt_number(m.diff[k])]
        matched.rows.append(row)
    speed = Grid(f"first epoch reaching each {c.at} level", [at, c.a.name, c.b.name], 0)
    for m in c.levels:
        ea = c.first_epoch_reaching["a"].get(m.level)
        eb = c.first_epoch_reaching["b"].get(m.level)
        speed.rows.append([fmt_number(m.level), _reached_text(ea), _reached_text(eb)])
    return [matched, speed]


def _reached_text(epoch: int | None) -> str:
    return "not reached" if epoch is None else str(epoch)


def comparison_csv(c: Comparison) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([c.at, "metric", csv_cell(c.a.name), csv_cell(c.b.name), "diff"])
    for m in c.levels:
        for k in c.metrics:
            writer.writerow([m.level, k, csv_cell(m.a[k]), csv_cell(m.b[k]), csv_cell(m.diff[k])])
    return buf.getvalue()


def ufm_trajectory_grids(runs: Sequence[Run]) -> list[Grid]:
    """Per run with UFM blocks: the optimum, then each checkpoint's measured values."""
    from ncinspect.runs import label_text

    grids = []
    for run in runs:
        blocks = [
            ("-" if r.epoch is None else str(r.epoch), result_labels(r)[1], r.ufm)
            for r in run.results
            if r.ufm is not None
        ]
        if not blocks:
            continue
        headers, rows = distance_trajectory(run.task, blocks)
        labels = label_text(run.labels)
        title = f"{run.name}" + (f" ({labels})" if labels else "") + ": distance to the UFM optimum"
        grid = Grid(title, headers, numeric_from=2, caption=distance_caption(blocks[-1][2]))
        grid.rows = rows
        grids.append(grid)
    if grids:
        grids[-1].caption += f"\ncaveat: {UFM_CAVEAT}"
    return grids


def summary_grids(
    runs: Sequence[Run], table: RunsTable, selected: Sequence[str] | None = None
) -> list[Grid]:
    """The default table view: a row per run at its final checkpoint (`runs_grids`), then, for
    the runs with several checkpoints, the first and final values of the `selected` keys, else
    of `SUMMARY_KEYS`."""
    grids = run_grids(table)
    several = [run for run in runs if len(run.results) > 1]
    if several:
        tasks = [t for t in TASK_ORDER if any(run.task == t for run in several)]
        keys = [
            k
            for t in tasks
            for k in ([k for k in keys_for(t) if k in selected] if selected else SUMMARY_KEYS[t])
        ]
        grids.append(_first_to_final(several, len(runs), keys))
    return grids + ufm_grids([row.final for row in table.rows])


def _first_to_final(runs: Sequence[Run], n_runs: int, keys: Sequence[str]) -> Grid:
    with_split = mixed_splits(run.split for run in runs)
    headers = ["run", *(["split"] if with_split else []), "checkpoints", "epochs"]
    for k in keys:
        h = METRICS[k].header
        headers += [f"{h} first", f"{h} final"]
    n_checkpoints = sum(len(run.results) for run in runs)
    caption = (
        f"{n_checkpoints} checkpoints in {len(runs)} of {n_runs} runs; every checkpoint: "
        "--by checkpoint; every epoch of each run: --by epoch\n" + legend(keys)
    )
    grid = Grid("from the first to the final checkpoint", headers, 2 if with_split else 1, caption)
    for run in runs:
        known = [e for e in run.epochs if e is not None]
        span = f"{min(known)}-{max(known)}" if known else "-"
        cells = []
        for k in keys:
            pair = (run.results[0], run.final) if k in keys_for(run.task) else None
            cells += ["", ""] if pair is None else [fmt_number(r.metrics.get(k)) for r in pair]
        grid.rows.append(
            [
                run.name,
                *([split_text(run.split)] if with_split else []),
                str(len(run.results)),
                span,
                *cells,
            ]
        )
    return grid


# ---------------------------------------------------------------------------------------------
# Runs grouped over seeds (`--group-by label`, `ncinspect.seeds`)


def _mean_std(point: GroupPoint, key: str) -> str:
    mean, std = point.mean.get(key), point.std.get(key)
    if mean is None:
        return "n/a"
    return fmt_number(mean) + ("" if std is None else f" ± {fmt_number(std)}")


def group_grids(groups: Sequence[SeedGroup], keys_by_task: dict[str, list[str]]) -> list[Grid]:
    """One grid per task: a row per group at its runs' final checkpoints, mean ± spread."""
    grids = []
    for task in TASK_ORDER:
        rows = [g for g in groups if g.task == task]
        if not rows:
            continue
        keys = keys_by_task[task]
        with_split = mixed_splits(g.split for g in rows)
        ids = ["group", *(["split"] if with_split else []), "runs", "final"]
        headers = [*ids, *(METRICS[k].header for k in keys)]
        caption = (
            "mean ± sample standard deviation over the runs of a group (runs that differ only "
            "by seed), each at its final checkpoint\n" + legend(keys)
        )
        grid = Grid(f"{task} run groups ({len(rows)})", headers, len(ids) - 2, caption)
        for g in rows:
            finals = sorted({e for e in g.final_epochs if e is not None})
            grid.rows.append(
                [
                    g.name,
                    *([split_text(g.split)] if with_split else []),
                    str(len(g.runs)),
                    "/".join(map(str, finals)) or "-",
                    *(_mean_std(g.final, k) for k in keys),
                ]
            )
        grids.append(grid)
    return grids


def group_trajectory_grids(
    groups: Sequence[SeedGroup], keys_by_task: dict[str, list[str]]
) -> list[Grid]:
    """Per group: each epoch's run count and mean ± spread."""
    grids = []
    with_split = mixed_splits(g.split for g in groups)
    for g in groups:
        keys = keys_by_task[g.task]
        title = f"{g.name}: {g.task}, {len(g.runs)} runs ({', '.join(r.name for r in g.runs)})"
        if with_split:
            title += f", split {split_text(g.split)}"
        grid = Grid(title, ["epoch", "runs", *(METRICS[k].header for k in keys)], 0)
        grid.caption = "mean ± sample standard deviation over the runs\n" + legend(keys)
        for p in g.points:
            grid.rows.append([str(p.epoch), str(p.n_runs), *(_mean_std(p, k) for k in keys)])
        grids.append(grid)
    return grids


def groups_csv(groups: Sequence[SeedGroup], keys_by_task: dict[str, list[str]]) -> str:
    """A row per group and epoch: the run count, then each key's mean and std."""
    keys = [k for task in TASK_ORDER for k in keys_by_task.get(task, [])]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "group",
            "task",
            "split",
            "epoch",
            "n_runs",
            *(f"{k}_{s}" for k in keys for s in ("mean", "std")),
        ]
    )
    for g in groups:
        for p in g.points:
            cells = []
            for k in keys:
                cells += [csv_cell(p.mean.get(k)), csv_cell(p.std.get(k))]
            writer.writerow(
                [csv_cell(g.name), g.task, csv_cell(g.split), p.epoch, p.n_runs, *cells]
            )
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Train and test together (`--nc-split A --eval-split B`, `ncinspect.paired`)


def pair_grids(
    pairs: Sequence[Pair],
    keys: dict[str, tuple[list[str], list[str]]],
    nc_split: str,
    eval_split: str,
) -> list[Grid]:
    """One grid per task: a row per checkpoint, the collapse keys of `nc_split` then the
    evaluation keys of `eval_split` (and the generalisation NC4 for classification)."""
    from ncinspect.paired import NC4_TRAIN_MEANS, pair_record

    grids = []
    for task in TASK_ORDER:
        rows = [p for p in pairs if p.any.task == task]
        if not rows:
            continue
        nc_keys, eval_keys = keys[task]
        extra = [NC4_TRAIN_MEANS] if task == "classification" else []
        headers = [
            "run",
            "checkpoint",
            "epoch",
            *(f"{METRICS[k].header} {nc_split}" for k in nc_keys),
            *(f"{METRICS[k].header} {eval_split}" for k in eval_keys),
            *([f"NC4 {eval_split}/{nc_split} means"] if extra else []),
        ]
        caption = (
            f"collapse on {nc_split}, generalisation on {eval_split}, one row per checkpoint"
            + (
                f"; NC4 {eval_split}/{nc_split} means: fraction of {eval_split} samples whose "
                f"prediction differs from the nearest {nc_split} class mean"
                if extra
                else ""
            )
            + "\n"
            + legend([*nc_keys, *eval_keys])
        )
        grid = Grid(f"{task}: {nc_split} collapse, {eval_split} evaluation", headers, 2, caption)
        names = _pair_names(rows)
        for p in rows:
            rec = pair_record(p, nc_keys, eval_keys)
            grid.rows.append(
                [
                    names[p.run],
                    checkpoint_name(p.checkpoint),
                    "-" if p.epoch is None else str(p.epoch),
                    *(fmt_number(rec["nc"][k]) for k in nc_keys),
                    *(fmt_number(rec["eval"][k]) for k in [*eval_keys, *extra]),
                ]
            )
        grids.append(grid)
    return grids


def _pair_names(pairs: Sequence[Pair]) -> dict[str, str]:
    from ncinspect.runs import run_names

    return run_names(p.run for p in pairs)


def pairs_csv(pairs: Sequence[Pair], keys: dict[str, tuple[list[str], list[str]]]) -> str:
    from ncinspect.paired import NC4_TRAIN_MEANS, pair_record

    nc_all = [k for task in TASK_ORDER for k in keys.get(task, ([], []))[0]]
    eval_all = [k for task in TASK_ORDER for k in keys.get(task, ([], []))[1]]
    extra = [NC4_TRAIN_MEANS] if "classification" in keys else []
    names = _pair_names(pairs)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "run",
            "task",
            "checkpoint",
            "epoch",
            *(f"nc_{k}" for k in nc_all),
            *(f"eval_{k}" for k in [*eval_all, *extra]),
        ]  # fmt: skip
    )
    for p in pairs:
        rec = pair_record(p, nc_all, eval_all)
        writer.writerow(
            [
                csv_cell(names[p.run]),
                p.any.task,
                csv_cell(p.checkpoint),
                csv_cell(p.epoch),
                *(csv_cell(rec["nc"].get(k)) for k in nc_all),
                *(csv_cell(rec["eval"].get(k)) for k in [*eval_all, *extra]),
            ]
        )
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# The NRC3 gamma across a regression run's checkpoints (`report --gamma-trajectory`)

GAMMA_FIELDS = ("gamma_searched", "lambda_min", "gamma_ratio", "gamma_used", "gamma_source")
GAMMA_CAPTION = (
    "gamma searched: the checkpoint's own NRC3 search on [0, lambda_min] (n/a when gamma "
    "was given); lambda_min: the target covariance's smallest eigenvalue; ratio = gamma searched / "
    "lambda_min; gamma used: what nrc3 was evaluated at (the final checkpoint's searched gamma, "
    "held for the earlier ones)"
)


def searched_gamma(r: Result) -> float | None:
    """The gamma a checkpoint's own NRC3 search found: `info["nrc3_own_search"]` once the run's
    final gamma is held for it (`analysis.regression.apply_run_gamma`), else its nrc3_gamma when
    that was searched; None when the gamma was given or came from the UFM lambdas."""
    own = r.info.get("nrc3_own_search")
    if isinstance(own, dict):
        return json_number(own.get("nrc3_gamma"))
    if r.info.get("nrc3_gamma_source") == "searched":
        return json_number(r.metrics.get("nrc3_gamma"))
    return None


def gamma_record(r: Result) -> dict[str, Any]:
    """One checkpoint's gamma record: the searched gamma, lambda_min (info), their ratio (None
    where Sigma is singular, as for nrc3_gamma_ratio), the gamma nrc3 used and its source."""
    searched = searched_gamma(r)
    lam_min = json_number(r.info.get("lambda_min"))
    ratio = None
    singular = bool(r.info.get("sigma_singular", False))
    if searched is not None and lam_min is not None and lam_min > 0 and not singular:
        ratio = searched / lam_min
    return {
        "epoch": r.epoch,
        "source": r.source,
        "gamma_searched": searched,
        "lambda_min": lam_min,
        "gamma_ratio": ratio,
        "gamma_used": json_number(r.metrics.get("nrc3_gamma")),
        "gamma_source": r.info.get("nrc3_gamma_source"),
    }


def regression_runs(runs: Sequence[Run]) -> list[Run]:
    """The regression runs, in order; a UsageError when there is none."""
    chosen = [run for run in runs if run.task == "regression"]
    if not chosen:
        raise UsageError("--gamma-trajectory: no regression store found; it shows NRC3's gamma")
    return chosen


def gamma_trajectory_grids(runs: Sequence[Run]) -> list[Grid]:
    """One grid per regression run: each checkpoint's searched gamma, lambda_min, their ratio and
    the gamma nrc3 used (the final checkpoint's, where the run-level protocol held it)."""
    from ncinspect.runs import label_text

    chosen = regression_runs(runs)
    with_split = mixed_splits(run.split for run in chosen)
    grids = []
    for run in chosen:
        labels = label_text(run.labels)
        title = f"{run.name}" + (f" ({labels})" if labels else "") + ": NRC3 gamma by epoch"
        if with_split:
            title += f", split {split_text(run.split)}"
        headers = ["epoch", "checkpoint", "gamma searched", "lambda_min", "ratio", "gamma used"]
        grid = Grid(title, headers, numeric_from=2, caption=GAMMA_CAPTION)
        for r in run.results:
            rec = gamma_record(r)
            cells = [rec[k] for k in ("gamma_searched", "lambda_min", "gamma_ratio", "gamma_used")]
            epoch = "-" if r.epoch is None else str(r.epoch)
            grid.rows.append([epoch, result_labels(r)[1], *(fmt_number(c) for c in cells)])
        grids.append(grid)
    return grids


def gamma_trajectory_json(runs: Sequence[Run]) -> str:
    doc = {
        "ncinspect_version": __version__,
        "runs": [
            {
                "run": run.name,
                "task": run.task,
                "split": run.split,
                "labels": jsonable(run.labels),
                "gamma_trajectory": [gamma_record(r) for r in run.results],
            }
            for run in regression_runs(runs)
        ],
    }
    return json.dumps(doc, indent=2, allow_nan=False)


def gamma_trajectory_csv(runs: Sequence[Run]) -> str:
    chosen = regression_runs(runs)
    with_split = mixed_splits(run.split for run in chosen)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", *(["split"] if with_split else []), "epoch", "source", *GAMMA_FIELDS])
    for run in chosen:
        for r in run.results:
            rec = gamma_record(r)
            writer.writerow(
                [
                    csv_cell(run.name),
                    *([csv_cell(run.split)] if with_split else []),
                    csv_cell(r.epoch),
                    csv_cell(r.source),
                    *(csv_cell(rec[k]) for k in GAMMA_FIELDS),
                ]
            )
    return buf.getvalue()
