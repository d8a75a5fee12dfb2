"""Writing a feature store: atomically, row-block by row-block, or whole from memory.

Owns: `StoreWriter` (the store appears under its final name only when complete; any failure,
Ctrl-C included, leaves no file behind), `write_store` for in-memory arrays, and `write_failure`
(one short line for a failed write). Saves a classification store's per-class row sums beside the
rows. Never reads a store back and never runs a model: rows, the head and saved statistics arrive
as arrays and plain `StatRecord`s. Axes: N samples, D feature dim, K classes, T regression targets.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from ncinspect._version import __version__
from ncinspect.errors import OutputError
from ncinspect.io.atomic import AtomicFile
from ncinspect.io.sources import StatRecord, Task
from ncinspect.io.store.layout import CLASS_SUMS, CORE_ATTRS, FORMAT, FORMAT_VERSION
from ncinspect.metrics.head import Head
from ncinspect.stats.classification import ClassSums

_TARGET_CHUNK_BYTES = 1 << 20


def _chunk_rows(d: int, itemsize: int) -> int:
    return int(max(64, min(65536, _TARGET_CHUNK_BYTES // max(1, d * itemsize))))


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
        headless: bool = False,
    ) -> None:
        self.stats_only = stats_only
        # a layer store (`extract --layers`) of a layer without a head: no /head group; K or T
        # is then the root attribute k or t
        self.headless = headless
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
        # the temporary file (`io.atomic`): new, private, under an unpredictable name
        self._tmp: AtomicFile | None = None
        # a classification store saves its rows' class sums (`report` then reads the rows once);
        # None once a block's labels are outside [0, width) (the store is refused on opening)
        self._class_sums: ClassSums | None = None
        if task == "classification" and not stats_only:
            self._class_sums = ClassSums.empty(self.width, self.d)

    def _check_destination(self) -> None:
        if self.path.is_dir():
            raise OutputError("output path is a directory, expected a file name", path=self.path)
        if self.path.is_symlink() and not self.overwrite:  # planted, maybe dangling
            raise OutputError(
                "output is a symbolic link; pass --overwrite to replace the link (its target is "
                "never written)",
                path=self.path,
            )
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
                self._tmp = AtomicFile(self.path)
                # No chunk cache: appends are large blocks written through, and a failed write
                # (disk full) then fails at once; with a cache HDF5 defers it to close, and a
                # close after a failed cache flush can crash the process (h5py 3.16 / HDF5 2.0).
                # h5py opens by name: `opener_path` names the file created above, never another.
                f = h5py.File(self._tmp.opener_path(), "w", rdcc_nbytes=0)
            except OSError as exc:
                raise OutputError(f"cannot create store: {exc}", path=self.path) from exc
            self._create_datasets(f)
        except BaseException:  # Ctrl-C too: `__exit__` does not run when `__enter__` raises
            try:
                if f is not None:
                    f.close()
            finally:
                self._discard()
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
        if self._head is None and not self.headless:
            raise ValueError("StoreWriter closed without set_head()")
        if self._head is not None and self.headless:
            raise ValueError("a headless StoreWriter was given a head")
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
        if self._head is not None:
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
        for key in CORE_ATTRS:
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
                assert self._tmp is not None
                try:
                    self._tmp.commit()  # replaces a link at the final name, never follows it
                except OSError as err:
                    raise OutputError(f"cannot write: {err.strerror}", path=self.path) from err
        except BaseException:
            self._discard()
            raise
        finally:
            if f is not None:
                try:
                    f.close()
                except Exception:  # noqa: BLE001 - the original error matters more
                    pass
            if exc_type is not None:
                self._discard()

    def _discard(self) -> None:
        """Remove this writer's temporary file (only while it is still the one it created)."""
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            tmp.discard()


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
    weight: np.ndarray | None,
    bias: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    outputs: np.ndarray | None = None,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
    width: int | None = None,
) -> Path:
    """Write a whole store from in-memory arrays (tests, fixtures, the Python API). `weight`
    None writes a headless store (a layer without a head), whose K or T is `width`."""
    task: Task = "classification" if labels is not None else "regression"
    features = np.asarray(features)
    if weight is None and width is None:
        raise ValueError("a store without a head needs width (K or T)")
    with StoreWriter(
        path,
        task=task,
        d=features.shape[1],
        width=int(weight.shape[0]) if weight is not None else int(width or 0),
        attrs=attrs,
        with_outputs=outputs is not None,
        overwrite=overwrite,
        expected_rows=features.shape[0],
        headless=weight is None,
    ) as w:
        w.append(features, labels=labels, targets=targets, outputs=outputs)
        if weight is not None:
            w.set_head(weight, bias)
    return Path(path)
