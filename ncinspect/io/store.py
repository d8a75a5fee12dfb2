"""The HDF5 feature store: the only module that imports h5py.

Owns: the on-disk format (version 1), atomic writing (temporary name, then rename), lazy
chunked reading as a `FeatureSource`, stats-only stores (saved statistics instead of rows) and
shard sets (one file per process of a distributed extraction, read as one source). Never computes
statistics and never touches models: statistics arrive and leave as plain `StatRecord`s.

Layout of one store (one checkpoint x one data split):
    /features      (N, D) float32 (or float16/float64 on request), chunked by rows
    /labels        (N,) int64                       classification
    /targets       (N, T) float32                   regression
    /outputs       (N, K) logits or (N, T) predictions, optional
    /head/weight   (K, D) or (T, D) float32
    /head/bias     (K,) or (T,) float32, only when the head has a bias
    root attributes: format="ncinspect.features", format_version=1, task, split, run, checkpoint,
    checkpoint_sha256, epoch (absent when unknown), created, ncinspect_version, n, d, k or t, and
    `provenance` (a JSON object with everything else: model spec, data spec, device, ...).
    content="features" (absent in older stores: the same).

A stats-only store (content="statistics", `extract --stats-only`) has no /features, /labels,
/targets or /outputs; instead
    /stats                 attrs: rows, nonfinite_rows_dropped, predictions (regression)
    /stats/<part>          one accumulator: attrs type (its `stats` class), scope ("global":
                           over every row of the source; "shard": over this file's rows), its
                           scalar fields, none_fields (JSON list of fields that are None)
    /stats/<part>/<field>  its array fields

A shard of a distributed extraction is named NAME.shard-RRRRR-of-PPPPP.h5 (a store of either
content) and has root attributes shard_index, shard_count, extraction_id (shared by the set),
total_rows (N of the whole set) and shard_layout ("blocks": contiguous whole batches in rank order;
"strided": every P-th batch). `open_shard_set` reads a complete, consistent set as one source.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from ncinspect._version import __version__
from ncinspect.errors import OutputError, StoreError, reading
from ncinspect.io.sources import (
    STAT_SCOPES,
    Batch,
    FeatureSource,
    SavedStatistics,
    StatRecord,
    Task,
    check_label_range,
    validate_arrays,
)
from ncinspect.metrics.head import Head
from ncinspect.stats.accumulators import ClassSums

FORMAT = "ncinspect.features"
FORMAT_VERSION = 1
CLASS_SUMS = "class_sums"  # group: counts (K,) int64 and sums (K, D) float64 of the stored rows
_TARGET_CHUNK_BYTES = 1 << 20
# Attributes the store writes itself; everything else a caller passes goes to `provenance`.
_CORE_ATTRS = (
    "split",
    "run",
    "checkpoint",
    "checkpoint_sha256",
    "epoch",
    "shard_index",
    "shard_count",
    "extraction_id",
    "total_rows",
    "shard_layout",
)
CONTENTS = ("features", "statistics")
# Root attributes that differ between the shards of one set (left out of the set's meta).
_SHARD_OWN_ATTRS = ("shard_index", "n", "created", "checkpoint_sha256")


def _chunk_rows(d: int, itemsize: int) -> int:
    return int(max(64, min(65536, _TARGET_CHUNK_BYTES // max(1, d * itemsize))))


def partial_name(path: Path) -> Path:
    """The temporary name a store is written under until it is complete."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def is_partial(path: Path) -> bool:
    return path.name.startswith(".") and ".partial-" in path.name


class StoreWriter:
    """Write one store row-block by row-block; it appears under its final name only when complete.

    Use as a context manager. On any exception (Ctrl-C included) the temporary file is removed and
    the final path is untouched. stats_only=True writes a stats-only store: no row datasets;
    `set_statistics` gives the records instead of `append`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        task: Task,
        d: int,
        width: int,
        attrs: dict[str, Any] | None = None,
        feature_dtype: str | np.dtype = "float32",
        with_outputs: bool = True,
        overwrite: bool = False,
        expected_rows: int | None = None,
        stats_only: bool = False,
    ) -> None:
        self.stats_only = stats_only
        self._statistics: tuple[dict[str, StatRecord], dict[str, Any]] | None = None
        if stats_only:
            with_outputs = False
        # expected_rows caps the HDF5 chunk so a small store is not padded to a whole chunk.
        self.expected_rows = expected_rows
        self.path = Path(path)
        self.task = task
        self.d = int(d)
        self.width = int(width)
        self.attrs = dict(attrs or {})
        self.feature_dtype = np.dtype(feature_dtype)
        self.with_outputs = with_outputs
        self.overwrite = overwrite
        self.n = 0
        self._head: Head | None = None
        self._file: h5py.File | None = None
        self._tmp = partial_name(self.path)
        # a classification store saves its rows' class sums (`report` then reads the rows once);
        # None once a block's labels are outside [0, width) (the store is refused on opening)
        self._class_sums: ClassSums | None = None
        if task == "classification" and not stats_only:
            self._class_sums = ClassSums.empty(self.width, self.d)

    def _check_destination(self) -> None:
        if self.path.is_dir():
            raise OutputError("output path is a directory, expected a file name", path=self.path)
        if self.path.exists() and not self.overwrite:
            raise OutputError("output exists; pass --overwrite to replace it", path=self.path)
        parent = self.path.parent
        for p in [parent, *parent.parents]:
            if p.exists() and not p.is_dir():
                raise OutputError(f"'{p}' is a file, expected a directory", path=self.path)
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create directory '{parent}': {exc.strerror}") from exc
        if not os.access(parent, os.W_OK):
            raise OutputError(f"directory '{parent}' is not writable", path=self.path)

    def __enter__(self) -> StoreWriter:
        self._check_destination()
        f: h5py.File | None = None
        try:
            try:
                # No chunk cache: appends are large blocks written through, and a failed write
                # (disk full) then fails at once; with a cache HDF5 defers it to close, and a
                # close after a failed cache flush can crash the process (h5py 3.16 / HDF5 2.0).
                f = h5py.File(self._tmp, "w", rdcc_nbytes=0)
            except OSError as exc:
                raise OutputError(f"cannot create store: {exc}", path=self.path) from exc
            self._create_datasets(f)
        except BaseException:  # Ctrl-C too: `__exit__` does not run when `__enter__` raises
            try:
                if f is not None:
                    f.close()
            finally:
                self._tmp.unlink(missing_ok=True)  # this process's own temporary name
            raise
        self._file = f
        return self

    def _create_datasets(self, f: h5py.File) -> None:
        """The empty, resizable datasets that `append` grows (none for a statistics store)."""
        if self.stats_only:
            return
        rows = _chunk_rows(self.d, self.feature_dtype.itemsize)
        if self.expected_rows is not None:
            rows = max(1, min(rows, int(self.expected_rows)))
        f.create_dataset(
            "features",
            shape=(0, self.d),
            maxshape=(None, self.d),
            dtype=self.feature_dtype,
            chunks=(rows, self.d),
        )
        if self.task == "classification":
            f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(rows,))
        else:
            f.create_dataset(
                "targets",
                shape=(0, self.width),
                maxshape=(None, self.width),
                dtype=np.float32,
                chunks=(rows, self.width),
            )
        if self.with_outputs:
            f.create_dataset(
                "outputs",
                shape=(0, self.width),
                maxshape=(None, self.width),
                dtype=np.float32,
                chunks=(rows, self.width),
            )

    def append(
        self,
        features: np.ndarray,
        labels: np.ndarray | None = None,
        targets: np.ndarray | None = None,
        outputs: np.ndarray | None = None,
    ) -> None:
        """Append B rows: features (B, D), labels (B,) or targets (B, T), outputs (B, K|T)."""
        f = self._file
        assert f is not None, "use StoreWriter as a context manager"
        if self.stats_only:
            raise ValueError("a stats-only StoreWriter takes set_statistics(), not append()")
        b = int(features.shape[0])
        if features.shape != (b, self.d):
            raise ValueError(f"features block {features.shape}, expected ({b}, {self.d})")
        # the values as stored: the class sums must be those of the rows a reader gets back
        features = np.asarray(features, dtype=self.feature_dtype)
        self._add_class_sums(features, labels)
        blocks: list[tuple[str, np.ndarray | None]] = [("features", features)]
        if self.task == "classification":
            blocks.append(("labels", labels))
        else:
            blocks.append(("targets", None if targets is None else targets.reshape(b, -1)))
        if self.with_outputs:
            blocks.append(("outputs", outputs))
        try:
            for name, arr in blocks:
                if arr is None:
                    raise ValueError(f"missing '{name}' block for a {self.task} store")
                ds = f[name]
                ds.resize(self.n + b, axis=0)
                ds[self.n : self.n + b] = arr
        except OSError as exc:
            raise write_failure(exc, self.path) from exc
        self.n += b

    def _add_class_sums(self, features: np.ndarray, labels: np.ndarray | None) -> None:
        if self._class_sums is None or labels is None:
            return
        y = np.asarray(labels)
        if y.shape != (features.shape[0],) or y.dtype.kind not in "iu":
            self._class_sums = None
            return
        if y.size and (int(y.min()) < 0 or int(y.max()) >= self.width):
            self._class_sums = None
            return
        if y.size:
            with np.errstate(all="ignore"):  # NaN/Inf rows: such sums are not written
                block = ClassSums.from_batch(features, y, self.width)
                self._class_sums = self._class_sums.merge(block)

    def set_head(self, weight: np.ndarray, bias: np.ndarray | None) -> None:
        self._head = Head(np.asarray(weight), None if bias is None else np.asarray(bias))

    def update_attrs(self, **attrs: Any) -> None:
        self.attrs.update(attrs)

    def set_statistics(
        self, parts: dict[str, StatRecord], rows: int, attrs: dict[str, Any] | None = None
    ) -> None:
        """Stats-only stores: the accumulator records (written to /stats), the rows they cover."""
        if not self.stats_only:
            raise ValueError("set_statistics() needs StoreWriter(stats_only=True)")
        self.n = int(rows)
        self._statistics = (dict(parts), dict(attrs or {}))

    def _write_statistics(self, f: h5py.File) -> None:
        if self._statistics is None:
            raise ValueError("a stats-only StoreWriter closed without set_statistics()")
        parts, attrs = self._statistics
        g = f.create_group("stats")
        g.attrs["rows"] = self.n
        for key, value in attrs.items():
            if value is not None:
                g.attrs[key] = value
        for name, record in parts.items():
            sub = g.create_group(name)
            sub.attrs["type"] = record.kind
            sub.attrs["scope"] = record.scope
            nones = []
            for key, value in record.fields.items():
                if value is None:
                    nones.append(key)
                elif isinstance(value, np.ndarray):
                    sub.create_dataset(key, data=value)
                elif isinstance(value, bool | int | float | str | np.generic):
                    sub.attrs[key] = value
                else:
                    raise TypeError(
                        f"stats/{name}: field {key!r} of {record.kind} is a "
                        f"{type(value).__name__}; expected an array, a number or a string"
                    )
            sub.attrs["none_fields"] = json.dumps(nones)

    def _finalize(self, f: h5py.File) -> None:
        if self._head is None:
            raise ValueError("StoreWriter closed without set_head()")
        if self.n == 0:
            raise OutputError(
                "no rows were written; refusing to create an empty store", path=self.path
            )
        if self.stats_only:
            self._write_statistics(f)
        elif (
            self._class_sums is not None
            and self._class_sums.n == self.n
            and np.isfinite(self._class_sums.sums).all()
        ):
            sums = f.create_group(CLASS_SUMS)
            sums.create_dataset("counts", data=self._class_sums.counts)
            sums.create_dataset("sums", data=self._class_sums.sums)
        g = f.create_group("head")
        g.create_dataset("weight", data=np.asarray(self._head.weight, dtype=np.float32))
        if self._head.bias is not None:
            g.create_dataset("bias", data=np.asarray(self._head.bias, dtype=np.float32))
        a = f.attrs
        a["format"] = FORMAT
        a["format_version"] = FORMAT_VERSION
        a["content"] = "statistics" if self.stats_only else "features"
        a["task"] = self.task
        a["n"] = self.n
        a["d"] = self.d
        a["k" if self.task == "classification" else "t"] = self.width
        a["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        a["ncinspect_version"] = __version__
        extra = dict(self.attrs)
        for key in _CORE_ATTRS:
            value = extra.pop(key, None)
            if value is not None:
                a[key] = value
        a["provenance"] = json.dumps(extra, sort_keys=True, default=str)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        f = self._file
        self._file = None
        try:
            if exc_type is None and f is not None:
                try:
                    self._finalize(f)
                    f.flush()
                    f.close()
                except (OSError, RuntimeError) as err:  # h5py reports failed flushes as either
                    raise write_failure(err, self.path) from err
                os.replace(self._tmp, self.path)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        finally:
            if f is not None:
                try:
                    f.close()
                except Exception:  # noqa: BLE001 - the original error matters more
                    pass
            if exc_type is not None:
                self._tmp.unlink(missing_ok=True)


def write_failure(err: BaseException, path: Path) -> OutputError:
    """One short line for a failed write: the OS reason (disk full, file too large), not
    HDF5's multi-line error stack."""
    code = getattr(err, "errno", None)
    if code is None:
        found = re.search(r"errno = (\d+)", str(err))
        code = int(found.group(1)) if found else None
    reason = os.strerror(code) if code else str(err).splitlines()[0]
    return OutputError(
        f"writing failed: {reason}; no store was left behind (free some space or choose "
        "another --out)",
        path=path,
    )


def write_store(
    path: str | Path,
    *,
    features: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    outputs: np.ndarray | None = None,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a whole store from in-memory arrays (tests, fixtures, the Python API)."""
    task: Task = "classification" if labels is not None else "regression"
    features = np.asarray(features)
    with StoreWriter(
        path,
        task=task,
        d=features.shape[1],
        width=weight.shape[0],
        attrs=attrs,
        with_outputs=outputs is not None,
        overwrite=overwrite,
        expected_rows=features.shape[0],
    ) as w:
        w.append(features, labels=labels, targets=targets, outputs=outputs)
        w.set_head(weight, bias)
    return Path(path)


def _py(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class StoreSource(FeatureSource):
    """A store opened for chunked reading. Holds the HDF5 file open until `close()`."""

    def __init__(self, path: str, f: h5py.File, task: Task, head: Head, meta: dict[str, Any]):
        feats = f["features"]
        super().__init__(
            path=path,
            task=task,
            n=int(feats.shape[0]),
            d=int(feats.shape[1]),
            head=head,
            has_outputs="outputs" in f,
            meta=meta,
            origin="store",
        )
        self._f = f
        self._features = feats
        self._labels = f["labels"] if "labels" in f else None
        self._targets = f["targets"] if "targets" in f else None
        self._outputs = f["outputs"] if "outputs" in f else None

    def saved_class_sums(self) -> tuple[np.ndarray, np.ndarray] | None:
        """/class_sums/counts and /class_sums/sums as written with the rows, if present with
        the expected kinds of data (shapes are the analysis's to check); else None."""
        g = self._f.get(CLASS_SUMS)
        if not isinstance(g, h5py.Group):
            return None
        counts, sums = g.get("counts"), g.get("sums")
        if not (isinstance(counts, h5py.Dataset) and isinstance(sums, h5py.Dataset)):
            return None
        if counts.dtype.kind not in "iu" or sums.dtype != np.float64:
            return None
        if counts.ndim != 1 or sums.ndim != 2 or counts.size * max(1, self.d) > 1 << 28:
            return None
        try:
            return np.asarray(counts[()], dtype=np.int64), np.asarray(sums[()])
        except (OSError, KeyError, RuntimeError, ValueError) as exc:
            raise StoreError(f"reading '{CLASS_SUMS}' failed: {exc}", path=self.path) from exc

    def chunk_rows(self) -> int:
        """About 8 MiB of features per read, a whole number of HDF5 chunks (each read once)."""
        chunks = self._features.chunks
        base = int(chunks[0]) if chunks else 4096
        return base * max(1, (1 << 23) // max(1, base * self.d * self._features.dtype.itemsize))

    def _features_into(self, start: int, stop: int, scratch: dict[str, np.ndarray]) -> np.ndarray:
        """Rows start:stop of the features, read into the reused buffer scratch["features"]."""
        m = stop - start
        buf = scratch.get("features")
        if buf is None or buf.shape[0] < m:
            buf = scratch["features"] = np.empty((m, self.d), dtype=self._features.dtype)
        if m:
            self._features.read_direct(buf, np.s_[start:stop], np.s_[0:m])
        return buf[:m]

    def _read(
        self,
        start: int,
        stop: int,
        outputs: bool = True,
        scratch: dict[str, np.ndarray] | None = None,
    ) -> Batch:
        def get(ds: Any) -> np.ndarray | None:
            return None if ds is None else ds[start:stop]

        try:
            features = (
                self._features[start:stop]
                if scratch is None
                else self._features_into(start, stop, scratch)
            )
            return Batch(
                features=features,
                labels=get(self._labels),
                targets=get(self._targets),
                outputs=get(self._outputs) if outputs else None,
            )
        except (OSError, KeyError, RuntimeError, ValueError) as exc:  # damaged chunks
            raise StoreError(f"reading rows {start}:{stop} failed: {exc}", path=self.path) from exc

    def close(self) -> None:
        self._f.close()


def _dataset(f: h5py.File, path: str, name: str, required: bool) -> Any:
    if name not in f:
        if required:
            found = sorted(_walk(f))
            raise StoreError(
                f"dataset '{name}' is missing; found datasets {found or 'none'}", path=path
            )
        return None
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise StoreError(f"'{name}' is a group, expected a dataset", path=path)
    return obj


# Deflate, the strongest filter h5py ships, compresses at most about 1032:1: the bound used when
# HDF5 cannot count a dataset's chunks (before 1.10.5).
_MAX_FILTER_RATIO = 1100


def unstored_claim(ds: h5py.Dataset) -> str | None:
    """Why `ds`'s header claims more data than the file holds for it, or None when it does not.

    Unwritten chunks read as fill values, so a header claiming 10^12 rows would otherwise be
    "read" for hours. A chunked dataset must have every chunk its shape needs allocated, however
    well its filters compress (scale-offset plus deflate stores a constant chunk in a few
    bytes); the count reads the chunk index only. A contiguous or compact one must store its
    claimed bytes. Nothing of the claimed size is allocated.
    """
    claimed = ds.dtype.itemsize
    for extent in ds.shape:
        claimed *= int(extent)
    if claimed == 0:
        return None
    stored = int(ds.id.get_storage_size())
    if ds.chunks is not None:
        needed = 1
        chunk_bytes = ds.dtype.itemsize
        for extent, chunk in zip(ds.shape, ds.chunks, strict=True):
            needed *= -(-int(extent) // int(chunk))
            chunk_bytes *= int(chunk)
        if ds.id.get_create_plist().get_nfilters() == 0:
            # unfiltered chunks are stored whole: the bytes count them, no index walk
            allocated = stored // chunk_bytes
        else:
            try:
                allocated = int(ds.id.get_num_chunks())
            except (AttributeError, RuntimeError, ValueError):  # HDF5 < 1.10.5 cannot count
                allocated = needed if stored * _MAX_FILTER_RATIO >= claimed else 0
        if allocated >= needed:
            return None
        return f"the file stores {allocated} of the {needed} chunks it needs"
    if stored < claimed:
        return f"the file stores {stored} bytes for it"
    return None


def check_claimed_sizes(
    path: str, datasets: dict[str, Any], error: type[StoreError] = StoreError
) -> None:
    """Refuse datasets whose shape claims more data than the file holds (truncated or crafted
    headers; `unstored_claim`), and datasets stored in other files (external or virtual), before
    reading any rows."""
    for name, ds in datasets.items():
        if ds is None:
            continue
        if ds.is_virtual or ds.external:
            kind = "virtual" if ds.is_virtual else "external"
            raise error(
                f"dataset '{name}' refers to data in other files ({kind} storage); ncinspect "
                "reads self-contained files only",
                path=path,
            )
        why = unstored_claim(ds)
        if why is not None:
            claimed = ds.dtype.itemsize * math.prod(int(s) for s in ds.shape)
            raise error(
                f"dataset '{name}' claims shape {tuple(int(s) for s in ds.shape)} "
                f"({claimed} bytes of {ds.dtype}) but {why} (a truncated or damaged file); "
                "re-create it",
                path=path,
            )


def _walk(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def open_store(path: str | Path) -> StoreSource | StatsSource:
    """Open and validate a store; raise `StoreError` naming the dataset or attribute at fault."""
    # A damaged file makes h5py raise KeyError, RuntimeError, ... from deep inside: one line.
    with reading(str(path), StoreError, "an HDF5 feature store"):
        return _open_store(path)


def _open_store(path: str | Path) -> StoreSource | StatsSource:
    p = str(path)
    try:
        # No chunk cache: reads are whole, aligned chunks (`chunk_rows`), each read once, and
        # HDF5 then copies them straight into the result instead of through the cache.
        f = h5py.File(p, "r", rdcc_nbytes=0)
    except (OSError, ValueError) as exc:
        raise StoreError(f"not a readable HDF5 file ({exc})", path=p) from exc
    try:
        attrs = {k: _py(v) for k, v in f.attrs.items()}
        fmt = attrs.get("format")
        if fmt != FORMAT:
            raise StoreError(
                f"attribute 'format' is {fmt!r}, expected {FORMAT!r} (not an ncinspect store)",
                path=p,
            )
        version = attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(
                f"attribute 'format_version' is {version!r}, expected {FORMAT_VERSION} "
                f"(this ncinspect {__version__} reads version {FORMAT_VERSION} only)",
                path=p,
            )
        content = attrs.get("content", "features")
        if content not in CONTENTS:
            raise StoreError(
                f"attribute 'content' is {content!r}, expected one of {', '.join(CONTENTS)}",
                path=p,
            )
        if content == "statistics":
            return _open_statistics(f, p, attrs)
        feats = _dataset(f, p, "features", True)
        weight = _dataset(f, p, "head/weight", True)
        bias = _dataset(f, p, "head/bias", False)
        labels = _dataset(f, p, "labels", False)
        targets = _dataset(f, p, "targets", False)
        outputs = _dataset(f, p, "outputs", False)
        check_claimed_sizes(
            p,
            {"features": feats, "head/weight": weight, "head/bias": bias, "labels": labels,
             "targets": targets, "outputs": outputs},
            StoreError,
        )  # fmt: skip
        names = {
            "features": "features",
            "labels": "labels",
            "targets": "targets",
            "weight": "head/weight",
            "bias": "head/bias",
            "outputs": "outputs",
        }
        task = validate_arrays(
            p,
            features_shape=feats.shape,
            features_dtype=feats.dtype,
            weight_shape=weight.shape,
            bias_shape=None if bias is None else bias.shape,
            labels_shape=None if labels is None else labels.shape,
            labels_dtype=None if labels is None else labels.dtype,
            targets_shape=None if targets is None else targets.shape,
            outputs_shape=None if outputs is None else outputs.shape,
            names=names,
            error=StoreError,
        )
        declared = attrs.get("task")
        if declared is not None and declared != task:
            raise StoreError(
                f"attribute 'task' is {declared!r} but the store holds "
                f"{'labels' if task == 'classification' else 'targets'}",
                path=p,
            )
        head = Head(
            np.asarray(weight[()], dtype=np.float64),
            None if bias is None else np.asarray(bias[()], dtype=np.float64),
        )
        if labels is not None:
            k = head.width
            step = 1 << 20
            for s in range(0, labels.shape[0], step):
                check_label_range(p, "labels", labels[s : s + step], k, StoreError)
        return StoreSource(p, f, task, head, _meta(attrs))
    except BaseException:
        f.close()
        raise


def _meta(attrs: dict[str, Any]) -> dict[str, Any]:
    """Root attributes as a source's meta, with `provenance` parsed from its JSON."""
    meta = dict(attrs)
    prov = meta.pop("provenance", None)
    if isinstance(prov, str):
        try:
            loaded = json.loads(prov)
        except json.JSONDecodeError:
            loaded = None
        if isinstance(loaded, dict):
            meta["provenance"] = loaded
    return meta


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
    weight = _dataset(f, p, "head/weight", True)
    bias = _dataset(f, p, "head/bias", False)
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


def _read_record(g: h5py.Group, name: str, p: str) -> StatRecord:
    where = f"stats/{name}"
    if not isinstance(g, h5py.Group):
        raise StoreError(f"'{where}' is a dataset, expected a group (one accumulator)", path=p)
    attrs = {k: _py(v) for k, v in g.attrs.items()}
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


def _open_statistics(f: h5py.File, p: str, attrs: dict[str, Any]) -> StatsSource:
    """A stats-only store: head, attributes and the /stats records (read whole; file closed)."""
    try:
        task = attrs.get("task")
        if task not in ("classification", "regression"):
            raise StoreError(
                f"attribute 'task' is {task!r}, expected 'classification' or 'regression'", path=p
            )
        n = _int_attr(attrs, "n", p, 1)
        d = _int_attr(attrs, "d", p, 1)
        head = _head_of(f, p)
        if head.weight.shape[1] != d:
            raise StoreError(
                f"'head/weight' has shape {head.weight.shape}, expected ({head.width}, {d}) for "
                f"attribute d = {d}",
                path=p,
            )
        group = f.get("stats")
        if not isinstance(group, h5py.Group):
            found = sorted(_walk(f))
            raise StoreError(
                "attribute 'content' is 'statistics' but group 'stats' is missing; found "
                f"datasets {found or 'none'}",
                path=p,
            )
        try:
            parts = {name: _read_record(group[name], name, p) for name in group}
            group_attrs = {k: _py(v) for k, v in group.attrs.items()}
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
            meta=_meta(attrs),
            origin="store",
            statistics=(saved,),
        )
    finally:
        f.close()


# ---------------------------------------------------------------------------------------------
# Shard sets


class ShardSetSource(FeatureSource):
    """The shards of a feature-store set read as one source: rows in shard order."""

    def __init__(self, path: str, shards: list[StoreSource], meta: dict[str, Any]) -> None:
        first = shards[0]
        super().__init__(
            path=path,
            task=first.task,
            n=sum(s.n for s in shards),
            d=first.d,
            head=first.head,
            has_outputs=all(s.has_outputs for s in shards),
            meta=meta,
            origin="store",
        )
        self.shards = shards
        self._starts = np.cumsum([0] + [s.n for s in shards])

    def chunk_rows(self) -> int:
        return self.shards[0].chunk_rows()

    def saved_class_sums(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The shards' saved class sums added up (plain sums); None unless every shard has them
        in one shape."""
        parts = [shard.saved_class_sums() for shard in self.shards]
        if any(p is None for p in parts):
            return None
        got = [p for p in parts if p is not None]
        if len({(c.shape, m.shape) for c, m in got}) != 1:
            return None
        return sum((c for c, _ in got[1:]), got[0][0]), sum((m for _, m in got[1:]), got[0][1])

    def batches(
        self, rows: int | None = None, *, outputs: bool = True, reuse: bool = False
    ) -> Iterator[Batch]:
        for shard in self.shards:
            yield from shard.batches(rows, outputs=outputs, reuse=reuse)

    def _read(
        self,
        start: int,
        stop: int,
        outputs: bool = True,
        scratch: dict[str, np.ndarray] | None = None,
    ) -> Batch:
        pieces = []
        for i, shard in enumerate(self.shards):
            a, b = max(start, int(self._starts[i])), min(stop, int(self._starts[i + 1]))
            if a < b:
                offset = int(self._starts[i])
                pieces.append(shard._read(a - offset, b - offset, outputs))
        if len(pieces) == 1:
            return pieces[0]

        def cat(name: str) -> np.ndarray | None:
            arrays = [getattr(b, name) for b in pieces]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        features = cat("features")
        assert features is not None
        return Batch(features, cat("labels"), cat("targets"), cat("outputs"))

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


def shard_set_name(paths: list[Path]) -> str:
    """How a set is named in results: DIR/NAME.shard-*-of-PPPPP.h5."""
    first = paths[0]
    base, _, tail = first.name.partition(".shard-")
    return str(first.with_name(f"{base}.shard-*-{tail.split('-', 1)[1]}"))


def open_shard_set(paths: list[Path]) -> FeatureSource:
    """Open the shards 0..P-1 of one set (in order) as one source, checking that they belong
    together: one extraction id, the same content, task, D, head and total N, and shard attributes
    that match their names. Raise `StoreError` naming the shard at fault."""
    name = shard_set_name(paths)
    sources: list[FeatureSource] = []
    try:
        for path in paths:
            sources.append(open_store(path))
        _check_shards(paths, sources)
        first = sources[0]
        meta = {k: v for k, v in first.meta.items() if k not in _SHARD_OWN_ATTRS}
        meta["n"] = sum(s.n for s in sources)
        if first.statistics is None:
            return ShardSetSource(name, [s for s in sources if isinstance(s, StoreSource)], meta)
        saved = tuple(x for s in sources for x in (s.statistics or ()))
        return StatsSource(
            path=name,
            task=first.task,
            n=meta["n"],
            d=first.d,
            head=first.head,
            has_outputs=False,
            meta=meta,
            origin="store",
            statistics=saved,
        )
    except BaseException:
        for src in sources:
            src.close()
        raise


def _check_shards(paths: list[Path], sources: list[FeatureSource]) -> None:
    count = len(paths)
    first = sources[0]

    def differs(path: Path, what: str, found: Any, expected: Any) -> StoreError:
        return StoreError(
            f"inconsistent shard set: {what} is {found!r} but {paths[0].name} has {expected!r} "
            "(shards of different extractions?); re-run the extraction with --overwrite",
            path=path,
        )

    for i, (path, src) in enumerate(zip(paths, sources, strict=True)):
        meta = src.meta
        for key, expected in (("shard_index", i), ("shard_count", count)):
            if meta.get(key) != expected:
                raise StoreError(
                    f"attribute '{key}' is {meta.get(key)!r}, expected {expected} (from the file "
                    "name); was the file renamed?",
                    path=path,
                )
        for key in ("extraction_id", "content", "total_rows", "shard_layout"):
            if meta.get(key) != first.meta.get(key):
                raise differs(path, f"attribute '{key}'", meta.get(key), first.meta.get(key))
        if (src.task, src.d, src.head.width) != (first.task, first.d, first.head.width):
            raise differs(
                path,
                "(task, D, width)",
                (src.task, src.d, src.head.width),
                (first.task, first.d, first.head.width),
            )
        a, b = src.head.bias, first.head.bias
        same_bias = (a is None and b is None) or (
            a is not None and b is not None and np.array_equal(a, b)
        )
        if not (np.array_equal(src.head.weight, first.head.weight) and same_bias):
            raise differs(path, "the head (weight, bias)", "different values", "others")
        if (src.statistics is None) != (first.statistics is None):
            raise differs(
                path, "attribute 'content'", meta.get("content"), first.meta.get("content")
            )
        if src.statistics is not None and first.statistics is not None:
            mine, theirs = src.statistics[0].parts, first.statistics[0].parts
            for part, record in theirs.items():
                if record.scope != "global":
                    continue
                other = mine.get(part)
                if other is None or not _same_record(other, record):
                    raise differs(
                        path,
                        f"the global (pass-1) statistics 'stats/{part}'",
                        "different",
                        "others",
                    )
    total = first.meta.get("total_rows")
    rows = sum(s.n for s in sources)
    if total != rows:
        raise StoreError(
            f"inconsistent shard set: the {count} shards hold {rows} rows in all, but attribute "
            f"'total_rows' is {total!r}",
            path=paths[0],
        )


def _same_record(a: StatRecord, b: StatRecord) -> bool:
    if a.kind != b.kind or a.scope != b.scope or a.fields.keys() != b.fields.keys():
        return False
    for key, value in a.fields.items():
        other = b.fields[key]
        if isinstance(value, np.ndarray) or isinstance(other, np.ndarray):
            if not (isinstance(value, np.ndarray) and isinstance(other, np.ndarray)):
                return False
            if value.shape != other.shape or not np.array_equal(value, other, equal_nan=True):
                return False
        elif value != other:
            return False
    return True
