"""What every feature source looks like to the statistics: a head (if any) and batches of rows.

Owns: `Batch`, the `FeatureSource` interface, the in-memory `ArraySource`, the plain-data
form of saved statistics (`StatRecord`, `SavedStatistics`: what a stats-only store or shard holds
in place of rows), and the shape/dtype validation shared by every reader. Knows nothing of HDF5,
torch or files' formats: `store` (HDF5) and `dumps` (.npz/.pt/.safetensors) build sources;
`stats` consumes them.

Axes: N samples, D feature dim, K classes, T regression targets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ncinspect.errors import InputError
from ncinspect.metrics.head import Head

Task = Literal["classification", "regression"]

DEFAULT_CHUNK_ROWS = 8192


@dataclass(frozen=True)
class Batch:
    """A block of consecutive rows. `labels` for classification, `targets` for regression."""

    features: np.ndarray  # (B, D)
    labels: np.ndarray | None = None  # (B,) int64
    targets: np.ndarray | None = None  # (B, T)
    outputs: np.ndarray | None = None  # (B, K) logits or (B, T) predictions


STAT_SCOPES = ("global", "shard")


@dataclass(frozen=True)
class StatRecord:
    """One accumulator of `stats` as plain data: its class name, scope and fields.

    fields: every init field of the dataclass by name (numpy arrays, ints, floats, strings, None).
    scope "global": gathered over every row of the source (pass 1; in a distributed extraction
    combined over all processes before pass 2), so every shard holds the same record; "shard":
    gathered over this file's rows only, merged over the shards of a set.
    """

    kind: str
    scope: str
    fields: dict[str, Any]

    @classmethod
    def of(cls, obj: Any, scope: str) -> StatRecord:
        """The record of a dataclass instance (generic: `dataclasses.fields`)."""
        if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
            raise TypeError(f"expected a dataclass instance, got {type(obj).__name__}")
        if scope not in STAT_SCOPES:
            raise ValueError(f"scope {scope!r}, expected one of {STAT_SCOPES}")
        values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
        return cls(kind=type(obj).__name__, scope=scope, fields=values)


@dataclass(frozen=True)
class SavedStatistics:
    """The statistics one file holds in place of its rows (`extract --stats-only`).

    path: the file; rows: the samples it covers; parts: accumulator records by name (the `stats/`
    group); attrs: the group's attributes (e.g. `nonfinite_rows_dropped`, `predictions`).
    """

    path: str
    rows: int
    parts: dict[str, StatRecord]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class FeatureSource:
    """A readable set of penultimate features with their labels/targets and head.

    Subclasses implement `_read(start, stop)`; everything else is shared.
    `meta` holds provenance (run, checkpoint, epoch, split, ...), `origin` names the format.
    `statistics` is set, one entry per file (a stats-only store, or every shard of a set), when
    the source holds saved statistics instead of rows; the analysis then finalizes those.
    `head` is None for a dump saved without one (stores always have it); `width_without_head`
    then gives K or T (`width`). `notes`: what the reader changed or assumed, for the result's
    warnings (e.g. integer targets read as labels).
    """

    path: str
    task: Task
    n: int
    d: int
    head: Head | None
    has_outputs: bool
    meta: dict[str, Any] = field(default_factory=dict)
    origin: str = "array"
    statistics: tuple[SavedStatistics, ...] | None = None
    width_without_head: int | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.head is None and self.width_without_head is None:
            raise ValueError("a source without a head needs width_without_head (K or T)")

    @property
    def width(self) -> int:
        """K (classification) or T (regression): the head's rows, else `width_without_head`."""
        if self.head is not None:
            return self.head.width
        assert self.width_without_head is not None  # __post_init__
        return self.width_without_head

    @property
    def k(self) -> int | None:
        return self.width if self.task == "classification" else None

    @property
    def t(self) -> int | None:
        return self.width if self.task == "regression" else None

    def require_head(self) -> Head:
        """The head, for the steps that cannot run without one; InputError naming the file."""
        if self.head is None:
            raise InputError("needs the head (weight); the file has none", path=self.path)
        return self.head

    def _read(
        self,
        start: int,
        stop: int,
        outputs: bool = True,
        scratch: dict[str, np.ndarray] | None = None,
    ) -> Batch:  # pragma: no cover - interface
        """Rows start:stop. scratch (optional): buffers the reader may reuse across calls."""
        raise NotImplementedError

    def chunk_rows(self) -> int:
        """A good number of rows per read (stores align this with their HDF5 chunks)."""
        return DEFAULT_CHUNK_ROWS

    def saved_class_sums(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(counts (K,), sums (K, D) float64) of the rows, saved when they were written (a
        store's /class_sums); None when the source has none. Not validated here."""
        return None

    def batches(
        self, rows: int | None = None, *, outputs: bool = True, reuse: bool = False
    ) -> Iterator[Batch]:
        """Every row exactly once, in order, `rows` at a time (the last block may be shorter).

        outputs=False leaves `Batch.outputs` None (saves reading them when they are not needed).
        reuse=True lets a reader put every batch's features in one buffer, so each batch is valid
        only until the next is requested (saves allocating and faulting in a fresh block per
        read); for consumers that finish with a batch before asking for the next.
        """
        step = max(1, int(rows or self.chunk_rows()))
        scratch: dict[str, np.ndarray] | None = {} if reuse else None
        for start in range(0, self.n, step):
            yield self._read(start, min(self.n, start + step), outputs, scratch)

    def output_batches(self, rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(outputs, labels) of every row, in order, `rows` at a time: for passes that need the
        stored logits only (calibration). Readers override it to leave the features unread."""
        for batch in self.batches(rows, outputs=True):
            assert batch.outputs is not None and batch.labels is not None
            yield batch.outputs, batch.labels

    def label_batches(self, rows: int | None = None) -> Iterator[np.ndarray]:
        """The labels (B,) of every row, in order, `rows` at a time: for a pass that needs the
        labels only (the class counts of `report --min-count`). Readers override it to leave
        the features unread."""
        for batch in self.batches(rows, outputs=False, reuse=True):
            assert batch.labels is not None
            yield batch.labels

    def close(self) -> None:
        """Release file handles (no-op for in-memory sources)."""


@dataclass
class ArraySource(FeatureSource):
    """A source whose arrays are all in memory (foreign dumps, tests, the Python API)."""

    features: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    labels: np.ndarray | None = None
    targets: np.ndarray | None = None
    outputs: np.ndarray | None = None

    def _read(
        self,
        start: int,
        stop: int,
        outputs: bool = True,
        scratch: dict[str, np.ndarray] | None = None,
    ) -> Batch:
        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[start:stop]

        return Batch(
            features=self.features[start:stop],
            labels=cut(self.labels),
            targets=cut(self.targets),
            outputs=cut(self.outputs) if outputs else None,
        )


def shape_str(shape: tuple[int, ...]) -> str:
    return str(tuple(int(s) for s in shape))


def validate_arrays(
    path: str,
    *,
    features_shape: tuple[int, ...],
    features_dtype: np.dtype,
    weight_shape: tuple[int, ...] | None,
    bias_shape: tuple[int, ...] | None,
    labels_shape: tuple[int, ...] | None,
    labels_dtype: np.dtype | None,
    targets_shape: tuple[int, ...] | None,
    outputs_shape: tuple[int, ...] | None,
    names: dict[str, str],
    error: type[InputError] = InputError,
) -> Task:
    """Check shapes and dtypes; raise one `InputError` naming the array, found and expected.

    `names` maps the roles (features, labels, targets, weight, bias, outputs) to the names the
    file uses, so messages speak the file's language (`head/weight` in a store, `weight` in a dump).
    weight_shape None: no head (a dump without one); K or T then comes from the outputs or the
    targets, and K without outputs from the labels' values (`check_label_range`).
    Returns the task implied by the arrays present.
    """
    _check_features(path, features_shape, features_dtype, names, error)
    n, d = features_shape
    if labels_shape is not None and targets_shape is not None:
        raise error(
            f"has both '{names['labels']}' and '{names['targets']}', expected exactly one",
            path=path,
        )
    if labels_shape is None and targets_shape is None:
        raise error(
            f"has neither '{names['labels']}' (classification) nor '{names['targets']}' "
            "(regression), expected one of them",
            path=path,
        )
    if weight_shape is None:
        width, width_from = _width_without_head(labels_shape, targets_shape, outputs_shape, names)
    else:
        width = _check_head(path, weight_shape, bias_shape, features_shape, names, error)
        width_from = f", T rows of '{names['weight']}'"
    task: Task
    if labels_shape is not None:
        task = "classification"
        assert labels_dtype is not None
        _check_labels(path, labels_shape, labels_dtype, features_shape, names, error)
    else:
        task = "regression"
        assert targets_shape is not None
        _check_targets(path, targets_shape, (n, width), d, width_from, names, error)
    if outputs_shape is not None and (width is None or tuple(outputs_shape) != (n, width)):
        expected = f"({n}, K)" if width is None else shape_str((n, width))
        raise error(
            f"'{names['outputs']}' has shape {shape_str(outputs_shape)}, expected {expected}",
            path=path,
        )
    return task


def _check_features(
    path: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    names: dict[str, str],
    error: type[InputError],
) -> None:
    if len(shape) != 2:
        raise error(
            f"'{names['features']}' has shape {shape_str(shape)}, expected 2-D (N, D)", path=path
        )
    if not np.issubdtype(dtype, np.floating):
        raise error(
            f"'{names['features']}' has dtype {dtype}, expected a floating dtype", path=path
        )
    n, d = shape
    if n == 0:
        raise error(f"'{names['features']}' has 0 rows, expected at least 1", path=path)
    if d == 0:
        raise error(f"'{names['features']}' has 0 columns, expected D >= 1", path=path)


def _width_without_head(
    labels_shape: tuple[int, ...] | None,
    targets_shape: tuple[int, ...] | None,
    outputs_shape: tuple[int, ...] | None,
    names: dict[str, str],
) -> tuple[int | None, str]:
    """K or T of a source without a head where the shapes tell, and whence (for messages): the
    outputs' columns, else the targets' (regression); None when only the labels' values can
    (classification)."""
    if outputs_shape is not None and len(outputs_shape) == 2:
        return int(outputs_shape[1]), f", T columns of '{names['outputs']}'"
    if labels_shape is None and targets_shape is not None and len(targets_shape) == 2:
        return int(targets_shape[1]), ""
    return None, ""


def _check_head(
    path: str,
    weight_shape: tuple[int, ...],
    bias_shape: tuple[int, ...] | None,
    features_shape: tuple[int, ...],
    names: dict[str, str],
    error: type[InputError],
) -> int:
    """The head's shapes against the features'; returns its width (K or T)."""
    d = features_shape[1]
    if len(weight_shape) != 2:
        raise error(
            f"'{names['weight']}' has shape {shape_str(weight_shape)}, expected 2-D (K or T, D)",
            path=path,
        )
    width = weight_shape[0]
    if weight_shape[1] != d:
        raise error(
            f"'{names['weight']}' has shape {shape_str(weight_shape)}, expected ({width}, {d}) "
            f"to match '{names['features']}' of shape {shape_str(features_shape)}",
            path=path,
        )
    if width == 0:
        raise error(f"'{names['weight']}' has 0 rows, expected K or T >= 1", path=path)
    if bias_shape is not None and tuple(bias_shape) != (width,):
        raise error(
            f"'{names['bias']}' has shape {shape_str(bias_shape)}, expected ({width},)", path=path
        )
    return int(width)


def _check_labels(
    path: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    features_shape: tuple[int, ...],
    names: dict[str, str],
    error: type[InputError],
) -> None:
    n = features_shape[0]
    if tuple(shape) != (n,):
        raise error(
            f"'{names['labels']}' has shape {shape_str(shape)}, expected ({n},) "
            f"to match '{names['features']}' of shape {shape_str(features_shape)}",
            path=path,
        )
    if not np.issubdtype(dtype, np.integer):
        raise error(
            f"'{names['labels']}' has dtype {dtype}, expected integer class indices", path=path
        )


def _check_targets(
    path: str,
    shape: tuple[int, ...],
    expected: tuple[int, int | None],
    d: int,
    width_from: str,
    names: dict[str, str],
    error: type[InputError],
) -> None:
    """Targets (N, T) with T <= D; width_from: where T came from, for the message."""
    n, width = expected
    if width is None or tuple(shape) != (n, width):
        wanted = f"({n}, T)" if width is None else f"({n}, {width})"
        raise error(
            f"'{names['targets']}' has shape {shape_str(shape)}, expected {wanted} "
            f"(N rows of '{names['features']}'{width_from})",
            path=path,
        )
    if width > d:
        raise error(
            f"regression with T = {width} targets > D = {d} features is not supported "
            "(the collapse metrics need T <= D)",
            path=path,
        )


def check_label_range(
    path: str,
    name: str,
    labels: np.ndarray,
    k: int,
    error: type[InputError] = InputError,
    k_from: str = "rows in the head weight",
) -> None:
    """Labels must index rows of the head: 0 <= y < K. k_from: where K came from (messages)."""
    if labels.size == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        bad = lo if lo < 0 else hi
        raise error(
            f"'{name}' contains label {bad}, expected labels in [0, {k - 1}] (K = {k} {k_from})",
            path=path,
        )
