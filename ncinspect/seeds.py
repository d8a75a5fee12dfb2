"""Runs that differ only by seed, as one group: the mean and spread of each metric per epoch.

Owns `group_seeds` (runs -> `SeedGroup`s: one per task, split and hyper-parameter record with
its seed left out), `GroupPoint` (one epoch's run count, mean and standard deviation over the
group's runs) and their JSON form. The spread is the sample standard deviation over runs (n - 1
divisor; null for a single run); a metric undefined (NaN) in a run is left out of that epoch's
mean for that metric only. Never reads a file and never renders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ncinspect.errors import UsageError
from ncinspect.metrics.results import Result, jsonable
from ncinspect.runs import Run, label_text

SEED_KEYS = frozenset({"seed", "random_seed", "rng_seed", "manual_seed", "global_seed"})
"""Record entries that tell seeds apart: left out of a group's identity."""
_FREE_TEXT = frozenset({"note"})  # manifest notes describe a run, not its training


@dataclass
class GroupPoint:
    """One epoch of a group: how many runs reached it, and each metric's mean and spread."""

    epoch: int | None
    n_runs: int
    mean: dict[str, float | None]
    std: dict[str, float | None]
    counts: dict[str, int] = field(default_factory=dict)  # runs with a finite value, per key


@dataclass
class SeedGroup:
    """Runs of one task and split whose hyper-parameters agree once seeds are left out."""

    name: str
    task: str
    split: str | None
    labels: dict[str, Any]
    runs: list[Run]
    points: list[GroupPoint]  # by epoch
    final: GroupPoint  # over each run's final checkpoint (epoch: the latest of them)
    final_epochs: list[int | None]


def identity(labels: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's labels that decides its group: everything but seeds and notes."""
    return {k: v for k, v in labels.items() if k.lower() not in SEED_KEYS | _FREE_TEXT}


def group_seeds(runs: Sequence[Run], keys: Sequence[str]) -> list[SeedGroup]:
    """Group `runs` that share task, split and hyper-parameters (seeds aside), in first-seen
    order, with the mean and spread of `keys` at every epoch any of them reached.

    A run whose record states nothing to group by, or with a checkpoint of unknown epoch, is a
    `UsageError` (ncinspect does not guess which runs are repeats of one configuration).
    """
    buckets: dict[tuple[str, str | None, str], list[Run]] = {}
    for run in runs:
        ident = identity(run.labels)
        if not ident:
            raise UsageError(
                f"--group-by label: run {run.name} states no hyper-parameters to group by; "
                "give them in --manifest or name the group with --label RUN=TEXT"
            )
        unknown = [r.source for r in run.results if r.epoch is None]
        if unknown:
            raise UsageError(
                f"--group-by label: run {run.name} has a checkpoint of unknown epoch "
                f"({unknown[0]}); runs are averaged epoch by epoch"
            )
        key = (run.task, run.split, repr(sorted(ident.items(), key=lambda kv: kv[0])))
        buckets.setdefault(key, []).append(run)
    groups = []
    for (task, split, _), members in buckets.items():
        labels = identity(members[0].labels)
        epochs = sorted({r.epoch for run in members for r in run.results if r.epoch is not None})
        points = [
            _point(epoch, [r for run in members for r in run.results if r.epoch == epoch], keys)
            for epoch in epochs
        ]
        finals = [run.final for run in members]
        final = _point(max((r.epoch or 0) for r in finals), finals, keys)
        groups.append(
            SeedGroup(
                name=label_text(labels) or ", ".join(f"{k}={v}" for k, v in labels.items()),
                task=task,
                split=split,
                labels=labels,
                runs=members,
                points=points,
                final=final,
                final_epochs=[r.epoch for r in finals],
            )
        )
    _tell_apart(groups)
    return groups


def _tell_apart(groups: list[SeedGroup]) -> None:
    """Groups of one task and split that would share a name (their loss, smoothing and weight
    decay agree; the learning rate, epochs, model or data differ) get the entries that differ
    appended, so that no two rows or legend lines read the same."""
    by_name: dict[tuple[str, str | None, str], list[SeedGroup]] = {}
    for g in groups:
        by_name.setdefault((g.task, g.split, g.name), []).append(g)
    for same in by_name.values():
        if len(same) < 2:
            continue
        keys = sorted({k for g in same for k in g.labels})
        differing = [k for k in keys if len({repr(g.labels.get(k)) for g in same}) > 1]
        for g in same:
            g.name += "".join(f", {k}={g.labels.get(k)}" for k in differing)


def _point(epoch: int | None, results: Sequence[Result], keys: Sequence[str]) -> GroupPoint:
    mean: dict[str, float | None] = {}
    std: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for key in keys:
        values = [float(r.metrics.get(key, math.nan)) for r in results]
        finite = [v for v in values if math.isfinite(v)]
        counts[key] = len(finite)
        mean[key] = math.fsum(finite) / len(finite) if finite else None
        if len(finite) > 1:
            m = mean[key]
            assert m is not None
            std[key] = math.sqrt(math.fsum((v - m) ** 2 for v in finite) / (len(finite) - 1))
        else:
            std[key] = None
    return GroupPoint(epoch, len(results), mean, std, counts)


def point_json(point: GroupPoint) -> dict[str, Any]:
    return {
        "epoch": point.epoch,
        "n_runs": point.n_runs,
        "mean": jsonable(point.mean),
        "std": jsonable(point.std),
        "n_values": point.counts,
    }


def groups_json(groups: Sequence[SeedGroup]) -> list[dict[str, Any]]:
    """One record per group: its labels, runs, final point and trajectory."""
    return [
        {
            "group": g.name,
            "task": g.task,
            "split": g.split,
            "labels": jsonable(g.labels),
            "runs": [run.name for run in g.runs],
            "final": {**point_json(g.final), "epochs": g.final_epochs},
            "trajectory": [point_json(p) for p in g.points],
        }
        for g in groups
    ]
