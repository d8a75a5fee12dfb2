"""Reading a feature store: open, validate, and read rows lazily in aligned chunks.

Owns: `open_store` (one file -> a validated `StoreSource`, or a `StatsSource` for a stats-only
store; `StoreError` naming the dataset or attribute at fault) and `StoreSource`, which holds the
HDF5 file open and reads rows chunk by chunk. Never writes a file and never computes statistics.
Axes: N samples, D feature dim, K classes, T regression targets.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ncinspect._version import __version__
from ncinspect.errors import StoreError, reading
from ncinspect.files import regular_file
from ncinspect.io.sources import Batch, FeatureSource, Task, check_label_range, validate_arrays
from ncinspect.io.store.checks import (
    check_claimed_sizes,
    check_self_contained,
    dataset,
    headless_width,
    layer_without_head,
)
from ncinspect.io.store.layout import (
    CLASS_SUMS,
    CONTENTS,
    FORMAT,
    FORMAT_VERSION,
    plain,
    source_meta,
)
from ncinspect.io.store.statistics import StatsSource, open_statistics
from ncinspect.metrics.head import Head


class StoreSource(FeatureSource):
    """A store opened for chunked reading. Holds the HDF5 file open until `close()`."""

    def __init__(
        self,
        path: str,
        f: h5py.File,
        task: Task,
        head: Head | None,
        meta: dict[str, Any],
        width: int | None = None,
    ):
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
            width_without_head=width if head is None else None,
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
        check_claimed_sizes(
            self.path, {f"{CLASS_SUMS}/counts": counts, f"{CLASS_SUMS}/sums": sums}, StoreError
        )
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

    def output_batches(self, rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._outputs is None or self._labels is None:
            yield from super().output_batches(rows)
            return
        step = max(1, int(rows or self.chunk_rows()))
        for start in range(0, self.n, step):
            stop = min(self.n, start + step)
            try:
                yield self._outputs[start:stop], self._labels[start:stop]
            except (OSError, KeyError, RuntimeError, ValueError) as exc:  # damaged chunks
                raise StoreError(
                    f"reading rows {start}:{stop} failed: {exc}", path=self.path
                ) from exc

    def label_batches(self, rows: int | None = None) -> Iterator[np.ndarray]:
        if self._labels is None:
            yield from super().label_batches(rows)
            return
        step = max(1, int(rows or self.chunk_rows()))
        for start in range(0, self.n, step):
            stop = min(self.n, start + step)
            try:
                yield np.asarray(self._labels[start:stop])
            except (OSError, KeyError, RuntimeError, ValueError) as exc:  # damaged chunks
                raise StoreError(
                    f"reading rows {start}:{stop} failed: {exc}", path=self.path
                ) from exc

    def close(self) -> None:
        self._f.close()


def open_store(path: str | Path) -> StoreSource | StatsSource:
    """Open and validate a store; raise `StoreError` naming the dataset or attribute at fault."""
    # A damaged file makes h5py raise KeyError, RuntimeError, ... from deep inside: one line.
    with reading(str(path), StoreError, "an HDF5 feature store"):
        return _open_store(path)


def _check_epoch(attrs: dict[str, Any], p: str) -> None:
    epoch = attrs.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
        raise StoreError(
            f"attribute 'epoch' is {epoch!r}, expected an integer (or no attribute when the "
            "epoch is unknown)",
            path=p,
        )


def _open_store(path: str | Path) -> StoreSource | StatsSource:
    p = str(path)
    regular_file(p, StoreError)  # a FIFO or device would block or never end
    try:
        # No chunk cache: reads are whole, aligned chunks (`chunk_rows`), each read once, and
        # HDF5 then copies them straight into the result instead of through the cache.
        f = h5py.File(p, "r", rdcc_nbytes=0)
    except (OSError, ValueError) as exc:
        raise StoreError(f"not a readable HDF5 file ({exc})", path=p) from exc
    try:
        check_self_contained(f, p, StoreError)  # nothing is read from other files
        attrs = {k: plain(v) for k, v in f.attrs.items()}
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
        _check_epoch(attrs, p)
        if content == "statistics":
            return open_statistics(f, p, attrs)
        feats = dataset(f, p, "features", True)
        headless = layer_without_head(f, attrs, p)
        weight = None if headless else dataset(f, p, "head/weight", True)
        bias = None if headless else dataset(f, p, "head/bias", False)
        labels = dataset(f, p, "labels", False)
        targets = dataset(f, p, "targets", False)
        outputs = dataset(f, p, "outputs", False)
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
            weight_shape=None if weight is None else weight.shape,
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
        if weight is None:
            head = None
            width = headless_width(attrs, task, p)
            if targets is not None and targets.shape[1] != width:
                raise StoreError(
                    f"'targets' has shape {tuple(targets.shape)}, expected ({targets.shape[0]}, "
                    f"{width}) (attribute 't')",
                    path=p,
                )
            if outputs is not None and outputs.shape[1] != width:
                raise StoreError(
                    f"'outputs' has shape {tuple(outputs.shape)}, expected "
                    f"({outputs.shape[0]}, {width}) (K or T from the root attributes)",
                    path=p,
                )
        else:
            head = Head(
                np.asarray(weight[()], dtype=np.float64),
                None if bias is None else np.asarray(bias[()], dtype=np.float64),
            )
            width = head.width
        if labels is not None:
            step = 1 << 20
            k_from = "rows in the head weight" if head is not None else "from attribute 'k'"
            for s in range(0, labels.shape[0], step):
                check_label_range(p, "labels", labels[s : s + step], width, StoreError, k_from)
        return StoreSource(p, f, task, head, source_meta(attrs), width)
    except BaseException:
        f.close()
        raise
