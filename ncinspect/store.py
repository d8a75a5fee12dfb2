"""The HDF5 feature store: the only module that imports h5py.

Owns: the on-disk format (version 1), atomic writing (temporary name, then rename), and lazy
chunked reading as a `FeatureSource`. Never computes statistics and never touches models.

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
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from ncinspect import __version__
from ncinspect.errors import OutputError, StoreError
from ncinspect.sources import (
    Batch,
    FeatureSource,
    Head,
    Task,
    check_label_range,
    validate_arrays,
)

FORMAT = "ncinspect.features"
FORMAT_VERSION = 1
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_TARGET_CHUNK_BYTES = 1 << 20
# Attributes the store writes itself; everything else a caller passes goes to `provenance`.
_CORE_ATTRS = ("split", "run", "checkpoint", "checkpoint_sha256", "epoch")


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
    the final path is untouched.
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
    ) -> None:
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
        try:
            f = h5py.File(self._tmp, "w")
        except OSError as exc:
            raise OutputError(f"cannot create store: {exc}", path=self.path) from exc
        self._file = f
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
        return self

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
        b = int(features.shape[0])
        if features.shape != (b, self.d):
            raise ValueError(f"features block {features.shape}, expected ({b}, {self.d})")
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
            raise OutputError(f"writing failed: {exc}", path=self.path) from exc
        self.n += b

    def set_head(self, weight: np.ndarray, bias: np.ndarray | None) -> None:
        self._head = Head(np.asarray(weight), None if bias is None else np.asarray(bias))

    def update_attrs(self, **attrs: Any) -> None:
        self.attrs.update(attrs)

    def _finalize(self, f: h5py.File) -> None:
        if self._head is None:
            raise ValueError("StoreWriter closed without set_head()")
        if self.n == 0:
            raise OutputError(
                "no rows were written; refusing to create an empty store", path=self.path
            )
        g = f.create_group("head")
        g.create_dataset("weight", data=np.asarray(self._head.weight, dtype=np.float32))
        if self._head.bias is not None:
            g.create_dataset("bias", data=np.asarray(self._head.bias, dtype=np.float32))
        a = f.attrs
        a["format"] = FORMAT
        a["format_version"] = FORMAT_VERSION
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
                except OSError as err:
                    raise OutputError(f"writing failed: {err}", path=self.path) from err
                finally:
                    f.close()
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
        except OSError as exc:
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


def _walk(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def open_store(path: str | Path) -> StoreSource:
    """Open and validate a store; raise `StoreError` naming the dataset or attribute at fault."""
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
        feats = _dataset(f, p, "features", True)
        weight = _dataset(f, p, "head/weight", True)
        bias = _dataset(f, p, "head/bias", False)
        labels = _dataset(f, p, "labels", False)
        targets = _dataset(f, p, "targets", False)
        outputs = _dataset(f, p, "outputs", False)
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
        meta = dict(attrs)
        prov = meta.pop("provenance", None)
        if isinstance(prov, str):
            try:
                loaded = json.loads(prov)
            except json.JSONDecodeError:
                loaded = None
            if isinstance(loaded, dict):
                meta["provenance"] = loaded
        return StoreSource(p, f, task, head, meta)
    except BaseException:
        f.close()
        raise


def looks_like_hdf5(path: str | Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == HDF5_SIGNATURE
    except OSError:
        return False
