"""Stats-only stores: saved statistics in place of rows (`extract --stats-only`).

Owns: `StatsSource` (a source that holds statistics, not rows; `batches` refuses) and reading the
`/stats` records, the head and the attributes of a stats-only store into `SavedStatistics`. The
records come back as plain `StatRecord`s: turning them into accumulators and metrics is the
analysis's job. Never writes a file and never computes statistics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from functools import cache
from typing import Any

import h5py
import numpy as np

from ncinspect.errors import StoreError
from ncinspect.io.sources import STAT_SCOPES, Batch, FeatureSource, SavedStatistics, StatRecord
from ncinspect.io.store.checks import (
    check_claimed_sizes,
    check_total_claim,
    dataset,
    dataset_names,
    headless_width,
    layer_without_head,
)
from ncinspect.io.store.layout import plain, source_meta
from ncinspect.metrics.head import Head


class StatsSource(FeatureSource):
    """A source holding saved statistics instead of rows: a stats-only store or a set of them.

    Nothing stays open. `batches` refuses: there are no rows to read.
    """

    def _read(
        self,
        start: int,
        stop: int,
        outputs: bool = True,
        scratch: dict[str, np.ndarray] | None = None,
    ) -> Batch:
        raise StoreError(
            "holds saved statistics only (written by extract --stats-only), no feature rows; "
            "the metrics come from the statistics (ncinspect report), rows need a feature store",
            path=self.path,
        )


def _int_attr(attrs: dict[str, Any], name: str, p: str, minimum: int = 0) -> int:
    value = attrs.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StoreError(
            f"attribute '{name}' is {value!r}, expected an integer >= {minimum}", path=p
        )
    return value


def _head_of(f: h5py.File, p: str) -> Head:
    weight = dataset(f, p, "head/weight", True)
    bias = dataset(f, p, "head/bias", False)
    check_claimed_sizes(p, {"head/weight": weight, "head/bias": bias}, StoreError)
    if len(weight.shape) != 2 or 0 in weight.shape:
        raise StoreError(
            f"'head/weight' has shape {tuple(weight.shape)}, expected 2-D (K or T, D)", path=p
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise StoreError(
            f"'head/bias' has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)", path=p
        )
    return Head(
        np.asarray(weight[()], dtype=np.float64),
        None if bias is None else np.asarray(bias[()], dtype=np.float64),
    )


# ClassScatter's routes (`stats.classification.plan_scatter`).
_ROUTES = ("dxd", "class_span")


@cache
def _stat_classes() -> dict[str, type]:
    """The accumulator dataclasses of `ncinspect.stats`, by class name."""
    from ncinspect.stats import classification, regression

    return {
        name: cls
        for module in (classification, regression)
        for name, cls in vars(module).items()
        if isinstance(cls, type) and dataclasses.is_dataclass(cls)
    }


def _check_scalars(kind: str, fields: dict[str, Any], where: str, p: str) -> None:
    """A record's scalar fields (attributes) against the types its class declares: counts are
    integers >= 0, floats finite numbers, strings text (a route one of `_ROUTES`). Arrays and
    unknown classes are the analysis's to check."""
    cls = _stat_classes().get(kind)
    if cls is None:
        return
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name not in fields or fields[f.name] is None:
            continue
        value, hint = fields[f.name], hints.get(f.name)
        expected = None
        if hint is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            expected = "an integer >= 0"
        elif hint is float and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            expected = "a finite number"
        elif hint is str and not isinstance(value, str):
            expected = "text"
        elif f.name == "route" and value not in _ROUTES:
            expected = f"one of {', '.join(_ROUTES)}"
        if expected is not None:
            raise StoreError(
                f"attribute '{where}/{f.name}' is {value!r}, expected {expected}", path=p
            )


def _read_record(g: h5py.Group, name: str, p: str) -> StatRecord:
    where = f"stats/{name}"
    if not isinstance(g, h5py.Group):
        raise StoreError(f"'{where}' is a dataset, expected a group (one accumulator)", path=p)
    attrs = {k: plain(v) for k, v in g.attrs.items()}
    kind, scope = attrs.pop("type", None), attrs.pop("scope", None)
    if not isinstance(kind, str) or scope not in STAT_SCOPES:
        raise StoreError(
            f"group '{where}' has attributes type={kind!r}, scope={scope!r}; expected a class "
            f"name and one of {', '.join(STAT_SCOPES)}",
            path=p,
        )
    try:
        nones = json.loads(attrs.pop("none_fields", "[]"))
    except (TypeError, json.JSONDecodeError):
        nones = None
    if not isinstance(nones, list):
        raise StoreError(f"attribute '{where}/none_fields' is not a JSON list", path=p)
    fields: dict[str, Any] = {str(k): None for k in nones}
    fields.update(attrs)
    _check_scalars(kind, fields, where, p)
    datasets = {key: g[key] for key in g}
    for key, ds in datasets.items():
        if not isinstance(ds, h5py.Dataset):
            raise StoreError(f"'{where}/{key}' is a group, expected a dataset", path=p)
    check_claimed_sizes(p, {f"{where}/{k}": ds for k, ds in datasets.items()}, StoreError)
    for key, ds in datasets.items():
        try:
            fields[key] = np.asarray(ds[()])
        except OSError as exc:
            raise StoreError(f"reading '{where}/{key}' failed: {exc}", path=p) from exc
    return StatRecord(kind=kind, scope=scope, fields=fields)


def _check_record_claims(f: h5py.File, group: h5py.Group, p: str) -> None:
    """Before any record is read (each is read whole): their datasets, with the head's, may not
    together claim more than the file can inflate to (`check_total_claim`)."""
    datasets: dict[str, Any] = {
        "head/weight": f.get("head/weight"),
        "head/bias": f.get("head/bias"),
    }
    for name in group:
        record = group[name]
        if isinstance(record, h5py.Group):
            for key in record:
                if isinstance(record[key], h5py.Dataset):
                    datasets[f"stats/{name}/{key}"] = record[key]
    check_total_claim(f, p, datasets, StoreError)


def open_statistics(f: h5py.File, p: str, attrs: dict[str, Any]) -> StatsSource:
    """A stats-only store: head, attributes and the /stats records (read whole; file closed)."""
    try:
        task = attrs.get("task")
        if task not in ("classification", "regression"):
            raise StoreError(
                f"attribute 'task' is {task!r}, expected 'classification' or 'regression'", path=p
            )
        n = _int_attr(attrs, "n", p, 1)
        d = _int_attr(attrs, "d", p, 1)
        head: Head | None = None
        if layer_without_head(f, attrs, p):
            width: int | None = headless_width(attrs, task, p)
        else:
            head = _head_of(f, p)
            width = None
        if head is not None and head.weight.shape[1] != d:
            raise StoreError(
                f"'head/weight' has shape {head.weight.shape}, expected ({head.width}, {d}) for "
                f"attribute d = {d}",
                path=p,
            )
        group = f.get("stats")
        if not isinstance(group, h5py.Group):
            found = sorted(dataset_names(f))
            raise StoreError(
                "attribute 'content' is 'statistics' but group 'stats' is missing; found "
                f"datasets {found or 'none'}",
                path=p,
            )
        _check_record_claims(f, group, p)
        try:
            parts = {name: _read_record(group[name], name, p) for name in group}
            group_attrs = {k: plain(v) for k, v in group.attrs.items()}
        except (KeyError, OSError, RuntimeError, TypeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise StoreError(
                f"group 'stats' cannot be read ({type(exc).__name__}: {first}); a damaged file, "
                "re-create it",
                path=p,
            ) from None
        rows = group_attrs.pop("rows", None)
        if rows != n:
            raise StoreError(f"attribute 'stats/rows' is {rows!r}, expected n = {n}", path=p)
        saved = SavedStatistics(path=p, rows=n, parts=parts, attrs=group_attrs)
        return StatsSource(
            path=p,
            task=task,
            n=n,
            d=d,
            head=head,
            has_outputs=False,
            meta=source_meta(attrs),
            origin="store",
            statistics=(saved,),
            width_without_head=width,
        )
    finally:
        f.close()
