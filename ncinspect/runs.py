"""Runs: grouping results into runs, run labels, trajectories and the matched comparison.

Owns: `Run` (one training run's checkpoints in epoch order, with labels such as the loss, the
label-smoothing alpha and the weight decay, read from the run's record, `ncinspect.hparams`),
`group_runs`, `run_names`, the runs table (`runs_table`, `runs_json`: final checkpoints side by
side, the best value per column, ratios to a baseline), `trajectory`, and `compare_runs` (two
runs compared at matched values of one metric, e.g. NC2 at equal NC1, by first-passage
interpolation in log(metric)). Arithmetic over given `Result`s only: never renders
(`ncinspect.render` does) and never opens a store (`ncinspect.hparams` reads the config files
behind the labels)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ncinspect._version import __version__
from ncinspect.errors import InputError, UsageError
from ncinspect.hparams import RECORD, record_of, resolve_hyperparams
from ncinspect.io.discovery import natural_key
from ncinspect.metrics.keys import METRICS, keys_for
from ncinspect.metrics.results import Result, json_number, jsonable, run_key


@dataclass
class Run:
    """One run: its checkpoints' results in epoch order (unknown epochs last, then by file name).

    `name` is what tables show and `--label` / `--baseline` refer to; `key` is `run_key` (the
    stores' folder and run attribute, one per run folder); `split` is the stores' split.
    """

    name: str
    task: str
    results: list[Result]
    labels: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    split: str | None = None

    @property
    def final(self) -> Result:
        return self.results[-1]

    @property
    def epochs(self) -> list[int | None]:
        return [r.epoch for r in self.results]


def checkpoint_order(result: Result) -> tuple[Any, ...]:
    """Sort key: by epoch, unknown epochs last, ties (and unknown epochs) by natural file name."""
    return (result.epoch is None, result.epoch or 0, natural_key(result.source))


# ---------------------------------------------------------------------------------------------
# Grouping and labels


def group_runs(
    results: Iterable[Result], label_overrides: dict[str, str] | None = None
) -> list[Run]:
    """Group results into runs by `run_key` (and by split and task when a run has several).

    A run is one folder's stores of one run attribute (or, without one, one folder's stores):
    runs of one name in two folders stay two runs, named by `run_names`. A run with several
    splits becomes one `Run` per split named `run[split]` (likewise `run[task]` for mixed
    tasks). Two checkpoints of one run at the same epoch are both kept and both get a warning.
    `labels` are the run's hyper-parameter record's (`ncinspect.hparams`; resolved here, without
    a manifest, for results `ncinspect.api.analyze` did not make). `label_overrides` maps a
    run's name (or its key) to free text, stored as `labels["label"]`; naming an unknown run is
    a `UsageError`.
    """
    results = list(results)
    bare = [r for r in results if RECORD not in r.extras]
    if bare:
        resolve_hyperparams(bare, run_names(run_key(r) for r in bare))
    groups: dict[tuple[str, str | None, str], list[Result]] = defaultdict(list)
    for r in results:
        groups[(run_key(r), r.split, r.task)].append(r)
    splits: dict[str, set[str | None]] = defaultdict(set)
    tasks: dict[str, set[str]] = defaultdict(set)
    for key, split, task in groups:
        splits[key].add(split)
        tasks[key].add(task)
    base_names = run_names(splits)

    runs: list[Run] = []
    for (key, split, task), members in groups.items():
        members.sort(key=checkpoint_order)
        suffix = []
        if len(splits[key]) > 1 and split is not None:
            suffix.append(split)
        if len(tasks[key]) > 1:
            suffix.append(task)
        name = base_names[key] + (f"[{','.join(suffix)}]" if suffix else "")
        run = Run(name=name, task=task, results=members, key=key, split=split)
        run.labels = record_of(run.final).labels()
        _warn_duplicate_epochs(run)
        runs.append(run)
    runs.sort(key=lambda run: natural_key(run.name))
    if label_overrides:
        _apply_overrides(runs, label_overrides, base_names)
    return runs


def _key_parts(key: str) -> tuple[str, str | None]:
    """A `run_key` as (directory, run attribute or None)."""
    directory, nul, attribute = key.partition("\0")
    return directory, (attribute if nul else None)


def run_names(keys: Iterable[str]) -> dict[str, str]:
    """Each `run_key` -> the name tables show (before any `[split]` suffix).

    A run attribute names its run when no other folder holds a run of that name. Runs of one
    name in several folders are each named by their folder's path relative to the common root
    of those folders (`seed0/ce`, `seed1/ce`; one level higher when a folder is the root
    itself), or by the whole folder where that name is taken. A run without the attribute is
    named by the shortest trailing part of its folder that is unique.
    """
    by_name: dict[str, list[str]] = defaultdict(list)
    dirs: list[str] = []
    for key in sorted(set(keys)):
        directory, attribute = _key_parts(key)
        if attribute is None:
            dirs.append(key)
        else:
            by_name[attribute].append(key)
    names = {ks[0]: name for name, ks in by_name.items() if len(ks) == 1}
    for ks in (ks for ks in by_name.values() if len(ks) > 1):
        folders = [_key_parts(k)[0] for k in ks]
        for key, folder, rel in zip(ks, folders, _relative_to_common_root(folders), strict=True):
            names[key] = folder if rel in names.values() else rel
    return {**names, **_directory_names(dirs, set(names.values()))}


def _relative_to_common_root(folders: Sequence[str]) -> list[str]:
    parts = [Path(f).parts for f in folders]
    common = 0
    while all(len(p) > common and p[common] == parts[0][common] for p in parts):
        common += 1
    if common and any(len(p) == common for p in parts):
        common -= 1
    return ["/".join(p[common:]) or f for p, f in zip(parts, folders, strict=True)]


def _directory_names(dirs: list[str], taken: set[str]) -> dict[str, str]:
    """A directory key is named by its shortest unique tail not already taken (else in full)."""
    depth = dict.fromkeys(dirs, 1)

    def tail(k: str) -> str:
        parts = Path(k).parts
        return "/".join(parts[-depth[k] :]) if parts else k

    while True:
        counts: dict[str, int] = defaultdict(int)
        for k in dirs:
            counts[tail(k)] += 1
        clashing = [k for k in dirs if counts[tail(k)] > 1 or tail(k) in taken]
        growable = [k for k in clashing if depth[k] < len(Path(k).parts)]
        if not growable:
            break
        for k in growable:
            depth[k] += 1
    tails = [tail(k) for k in dirs]
    return {
        k: k if t in taken or tails.count(t) > 1 else t for k, t in zip(dirs, tails, strict=True)
    }


def _apply_overrides(runs: list[Run], overrides: dict[str, str], base: dict[str, str]) -> None:
    for target, text in overrides.items():
        hit = [run for run in runs if target in (run.name, run.key, base[run.key])]
        if not hit:
            names = ", ".join(run.name for run in runs) or "none"
            raise UsageError(f"--label {target}={text}: no run named {target!r}; runs: {names}")
        for run in hit:
            run.labels["label"] = text


def _warn(result: Result, message: str) -> None:
    if message not in result.warnings:
        result.warnings.append(message)


def _warn_duplicate_epochs(run: Run) -> None:
    by_epoch: dict[int, list[Result]] = defaultdict(list)
    for r in run.results:
        if r.epoch is not None:
            by_epoch[r.epoch].append(r)
    for epoch, same in by_epoch.items():
        if len(same) < 2:
            continue
        names = [Path(r.source).name for r in same]
        if len(set(names)) < len(names):
            names = [r.source for r in same]
        count = "two" if len(same) == 2 else str(len(same))
        message = f"run {run.name} has {count} checkpoints at epoch {epoch}: {', '.join(names)}"
        for r in same:
            _warn(r, message)


_REGRESSION_LOSSES = ("mse", "l1", "l2", "huber", "smooth_l1", "mae")


def _is_classification_loss(loss: Any) -> bool:
    """False for a regression loss, where a label-smoothing entry (often 0 in a shared config
    template) means nothing; True when the loss is unknown or a classification loss."""
    if not loss:
        return True
    name = str(loss).lower().replace("-", "_")
    return (
        not any(
            name == r or name.startswith(r + "_") or name.endswith("_" + r)
            for r in _REGRESSION_LOSSES
        )
        and "regression" not in name
    )


def label_text(labels: dict[str, Any]) -> str:
    """Short legend text: 'free text, ce, LS 0.1, WD 0.0005' (empty when nothing is known).

    The label-smoothing part is left out for regression losses (mse, l1, huber, ...).
    """
    parts = []
    if labels.get("label"):
        parts.append(str(labels["label"]))
    if labels.get("loss"):
        parts.append(str(labels["loss"]))
    if labels.get("label_smoothing") is not None and _is_classification_loss(labels.get("loss")):
        parts.append(f"LS {labels['label_smoothing']:g}")
    if labels.get("weight_decay") is not None:
        parts.append(f"WD {labels['weight_decay']:g}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# The runs table


@dataclass
class RunRow:
    """One run in the table: its final checkpoint, and its values over the baseline's."""

    run: str
    task: str
    labels: dict[str, Any]
    epochs: list[int | None]
    final: Result
    ratio_to_baseline: dict[str, float | None] | None
    split: str | None = None


@dataclass
class RunsTable:
    """Rows in run order. `best_in_split` maps each split to {metric key: the run holding its
    best final value among that split's runs}; `best` is that map when every run has one split,
    and empty when splits are mixed (a train value is never ranked against a test value)."""

    keys: list[str]
    rows: list[RunRow]
    best: dict[str, str]
    baseline: str | None = None
    best_in_split: dict[str | None, dict[str, str]] = field(default_factory=dict)

    @property
    def splits(self) -> list[str | None]:
        """The rows' splits in row order, each once (None: a store without a split)."""
        return list(dict.fromkeys(row.split for row in self.rows))


def runs_table(runs: Sequence[Run], keys: Sequence[str], baseline: str | None = None) -> RunsTable:
    """Final checkpoints side by side.

    `best[key]` is the run with the lowest (or highest, per `keys.METRICS`) finite final value,
    set only when at least two runs have one (first run wins ties; parameters such as
    `nrc3_gamma` get none); runs are ranked within their split (`best_in_split`). With
    `baseline`, each row gets value / baseline value per key (None where either is undefined or
    the baseline is 0); every run must share its task.
    """
    keys = list(keys)
    names = ", ".join(r.name for r in runs) or "none"
    base: Run | None = None
    if baseline is not None:
        base = next((r for r in runs if baseline in (r.name, r.key)), None)
        if base is None:
            raise UsageError(f"--baseline {baseline}: no run named {baseline!r}; runs: {names}")
        others = [r.name for r in runs if r.task != base.task]
        if others:
            raise UsageError(
                f"--baseline {baseline} is a {base.task} run, but {', '.join(others)} "
                f"{'is' if len(others) == 1 else 'are'} not; ratios need runs of one task "
                f"(runs: {names})"
            )
    rows = []
    for run in runs:
        ratio = None if base is None else _ratios(run.final, base.final, keys)
        rows.append(
            RunRow(run.name, run.task, dict(run.labels), run.epochs, run.final, ratio, run.split)
        )
    in_split = {
        split: _best([r for r in runs if r.split == split], keys)
        for split in dict.fromkeys(r.split for r in runs)
    }
    best = next(iter(in_split.values())) if len(in_split) == 1 else {}
    return RunsTable(keys, rows, best, baseline, in_split)


def _value(result: Result, key: str) -> float:
    v = result.metrics.get(key)
    return math.nan if v is None else float(v)


def _ratios(final: Result, base: Result, keys: Sequence[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in keys:
        v, b = _value(final, key), _value(base, key)
        out[key] = json_number(v / b) if math.isfinite(v) and math.isfinite(b) and b else None
    return out


def _best(runs: Sequence[Run], keys: Sequence[str]) -> dict[str, str]:
    best: dict[str, str] = {}
    for key in keys:
        info = METRICS.get(key)
        if info is None or info.better not in ("lower", "higher"):
            continue
        sign = 1.0 if info.better == "lower" else -1.0
        scored = [(sign * _value(r.final, key), i, r.name) for i, r in enumerate(runs)]
        finite = [s for s in scored if math.isfinite(s[0])]
        if len(finite) >= 2:
            best[key] = min(finite)[2]
    return best


def runs_json(table: RunsTable) -> dict[str, Any]:
    """The runs table as JSON: version, then one record per run with its final result."""
    return {
        "ncinspect_version": __version__,
        "runs": [
            {
                "run": row.run,
                "task": row.task,
                "labels": jsonable(row.labels),
                "epochs": list(row.epochs),
                "final": row.final.to_json(),
                "ratio_to_baseline": None
                if row.ratio_to_baseline is None
                else dict(row.ratio_to_baseline),
            }
            for row in table.rows
        ],
    }


def trajectory(run: Run, keys: Sequence[str]) -> list[dict[str, Any]]:
    """One record per checkpoint in order: epoch, source, then each key's value (None if NaN)."""
    return [
        {"epoch": r.epoch, "source": r.source, **{k: json_number(r.metrics.get(k)) for k in keys}}
        for r in run.results
    ]


# ---------------------------------------------------------------------------------------------
# The matched comparison

DEFAULT_MATCHED: dict[str, tuple[str, ...]] = {
    "classification": ("nc2_etf_means", "nc2_etf_weights", "nc3", "nc4", "accuracy"),
    "regression": ("nrc1", "nrc1_centered", "nrc2", "nrc2_centered", "nrc3", "r2"),
}


@dataclass(frozen=True)
class MatchedLevel:
    """Both runs' metrics where `at` first reaches `level` (None: that run never crosses it)."""

    level: float
    a: dict[str, float | None]
    b: dict[str, float | None]
    diff: dict[str, float | None]  # b - a


@dataclass
class Comparison:
    """Runs `a` and `b` compared at matched values of the metric `at` rather than at epochs."""

    at: str
    a: Run
    b: Run
    metrics: list[str]
    levels: list[MatchedLevel]
    first_epoch_reaching: dict[str, dict[float, int | None]]  # "a"/"b" -> level -> epoch


def _direction(at: str) -> str:
    info = METRICS.get(at)
    if info is None or info.better not in ("lower", "higher"):
        scores = ", ".join(k for k, m in METRICS.items() if m.better != "-")
        raise UsageError(f"--at {at}: expected a metric with a direction, one of {scores}")
    return info.better


def at_series(run: Run, at: str) -> list[tuple[float, Result]]:
    """(at-value, result) in checkpoint order, skipping non-positive and undefined values."""
    out = []
    for r in run.results:
        v = _value(r, at)
        if math.isfinite(v) and v > 0:
            out.append((v, r))
    return out


def _reached(value: float, level: float, direction: str) -> bool:
    return value <= level if direction == "lower" else value >= level


def first_epoch_reaching(run: Run, at: str, level: float) -> int | None:
    """Epoch of the first checkpoint whose `at` value is at or past `level` in the collapse
    direction (<= for a lower-is-collapsed metric, >= otherwise); None if none (or no epoch)."""
    direction = _direction(at)
    for r in run.results:
        v = _value(r, at)
        if not math.isnan(v) and _reached(v, level, direction):
            return r.epoch
    return None


def matched_values(
    run: Run, at: str, level: float, metrics: Sequence[str]
) -> dict[str, float | None] | None:
    """Each metric where `at` first passes `level`: on the first segment of consecutive
    checkpoints (i, i+1) with at_i >= level >= at_{i+1} (reversed for a higher-is-collapsed
    `at`), linear in log(at) between them; exact at a checkpoint that equals `level`. None when
    the run never crosses `level` (never extrapolated)."""
    direction = _direction(at)
    series = at_series(run, at)
    log_level = math.log(level)
    for i, (v0, r0) in enumerate(series):
        if v0 == level:
            return {k: json_number(_value(r0, k)) for k in metrics}
        if i + 1 == len(series):
            break
        v1, r1 = series[i + 1]
        crosses = v0 > level > v1 if direction == "lower" else v0 < level < v1
        if crosses:
            t = (log_level - math.log(v0)) / (math.log(v1) - math.log(v0))
            out: dict[str, float | None] = {}
            for k in metrics:
                m0, m1 = _value(r0, k), _value(r1, k)
                out[k] = json_number(m0 + t * (m1 - m0))
            return out
    return None


def default_levels(a: Run, b: Run, at: str, n_levels: int = 5) -> list[float]:
    """`n_levels` log-spaced values strictly inside the overlap of both runs' `at` ranges,
    in the order training reaches them (descending for a lower-is-collapsed metric)."""
    direction = _direction(at)
    spans = []
    for run in (a, b):
        values = [v for v, _ in at_series(run, at)]
        if not values:
            raise InputError(
                f"run {run.name} has no checkpoint with a positive, finite {at}; "
                "cannot match runs on it"
            )
        spans.append((min(values), max(values)))
    lo, hi = max(spans[0][0], spans[1][0]), min(spans[0][1], spans[1][1])
    if not lo < hi:
        (a_lo, a_hi), (b_lo, b_hi) = spans
        raise InputError(
            f"runs {a.name} and {b.name} do not overlap in {at}: {a.name} spans "
            f"[{a_lo:.4g}, {a_hi:.4g}], {b.name} spans [{b_lo:.4g}, {b_hi:.4g}]"
        )
    levels = [float(x) for x in np.geomspace(lo, hi, n_levels + 2)[1:-1]]
    return levels[::-1] if direction == "lower" else levels


def compare_runs(
    a: Run,
    b: Run,
    at: str = "nc1",
    metrics: Sequence[str] | None = None,
    levels: Sequence[float] | None = None,
    n_levels: int = 5,
) -> Comparison:
    """Compare two runs of one task at matched values of `at` (see `matched_values`).

    `metrics` defaults to the task's main metrics (`DEFAULT_MATCHED`), without `at` itself;
    `levels` default to `default_levels` (an `InputError` when the runs' ranges do not overlap).
    """
    _direction(at)
    if a.task != b.task:
        raise UsageError(f"cannot compare a {a.task} run ({a.name}) with a {b.task} run ({b.name})")
    task_keys = keys_for(a.task)
    if at not in task_keys:
        raise UsageError(f"--at {at} is not a {a.task} metric; use one of {', '.join(task_keys)}")
    chosen = list(DEFAULT_MATCHED[a.task] if metrics is None else metrics)
    unknown = [k for k in chosen if k not in METRICS]
    if unknown:
        raise UsageError(
            f"--metrics: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(METRICS)}"
        )
    chosen = [k for k in chosen if k != at]
    if levels is None:
        if n_levels < 1:
            raise UsageError(f"n_levels must be at least 1, got {n_levels}")
        levels = default_levels(a, b, at, n_levels)
    else:
        bad = [x for x in levels if not (math.isfinite(x) and x > 0)]
        if bad:
            raise UsageError(f"levels of {at} must be positive and finite, got {bad}")
    matched = []
    for level in levels:
        va = matched_values(a, at, level, chosen)
        vb = matched_values(b, at, level, chosen)
        none = dict.fromkeys(chosen)
        va, vb = va or dict(none), vb or dict(none)
        diff = {k: _minus(vb[k], va[k]) for k in chosen}
        matched.append(MatchedLevel(float(level), va, vb, diff))
    reaching = {
        side: {float(x): first_epoch_reaching(run, at, x) for x in levels}
        for side, run in (("a", a), ("b", b))
    }
    return Comparison(at, a, b, chosen, matched, reaching)


def _minus(x: float | None, y: float | None) -> float | None:
    return None if x is None or y is None else x - y


def comparison_json(c: Comparison) -> dict[str, Any]:
    """The comparison as JSON; each level's key is the `at` metric's name; diff = b - a."""
    return {
        "at": c.at,
        "runs": [c.a.name, c.b.name],
        "levels": [
            {c.at: m.level, "a": dict(m.a), "b": dict(m.b), "diff": dict(m.diff)} for m in c.levels
        ],
        "first_epoch_reaching": {
            side: {str(level): epoch for level, epoch in by_level.items()}
            for side, by_level in c.first_epoch_reaching.items()
        },
    }
