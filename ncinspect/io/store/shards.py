"""Shard sets: the files of a distributed extraction, named, found and read as one source.

Owns: the shard naming scheme (`NAME.shard-RRRRR-of-PPPPP.h5`, 0-based: `shard_name`,
`shard_key`, `shard_paths`, which names what is missing from an incomplete set), `open_shard_set`
(a complete, consistent set as one source: rows in shard order, or the shards' saved statistics
together) and the checks that the shards belong together. Imports the store reader (and h5py)
only when a set is opened, so naming costs nothing. Never writes a file and merges no
accumulators: a stats-only set hands every shard's records to the analysis (only the row shards'
saved class sums are added up here, plain sums).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ncinspect.errors import InputError, StoreError
from ncinspect.files import inside
from ncinspect.io.sources import Batch, FeatureSource, StatRecord

if TYPE_CHECKING:
    from ncinspect.io.store.reader import StoreSource
    from ncinspect.metrics.head import Head

SHARD_PATTERN = re.compile(
    r"^(?P<base>.+)\.shard-(?P<index>\d{5})-of-(?P<count>\d{5})(?P<suffix>\.h5|\.hdf5)$"
)
# Root attributes that differ between the shards of one set (left out of the set's meta).
_SHARD_OWN_ATTRS = ("shard_index", "n", "created", "checkpoint_sha256")


def shard_name(base: str, index: int, count: int, suffix: str = ".h5") -> str:
    """The file name of shard `index` of `count`: NAME.shard-RRRRR-of-PPPPP.h5 (0-based)."""
    return f"{base}.shard-{index:05d}-of-{count:05d}{suffix}"


def shard_key(path: Path) -> tuple[Path, str, int, str] | None:
    """(directory, NAME, count, suffix) of a shard file's set; None for any other file."""
    m = SHARD_PATTERN.match(path.name)
    if m is None:
        return None
    return path.parent, m["base"], int(m["count"]), m["suffix"]


def shard_paths(path: Path) -> list[Path]:
    """Every shard of the set `path` belongs to, in order; InputError naming what is missing."""
    key = shard_key(path)
    if key is None:
        raise InputError("is not a shard file (NAME.shard-RRRRR-of-PPPPP.h5)", path=path)
    folder, base, count, suffix = key
    if count < 1:
        raise InputError("names a set of 0 shards", path=path)
    paths = [folder / shard_name(base, i, count, suffix) for i in range(count)]
    # The shard named is followed wherever it points; the others were found beside it and must
    # be regular files inside its folder (a link leaving the folder counts as missing).
    missing = [p for p in paths if p != path and not inside(folder, p)]
    if missing:
        shown = ", ".join(p.name for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise InputError(
            f"incomplete shard set: {len(missing)} of {count} shard(s) missing ({shown}); re-run "
            f"the extraction with --nproc-per-node {count}, or with --overwrite",
            path=folder / shard_name(base, 0, count, suffix).replace(".shard-00000-", ".shard-*-"),
        )
    return paths


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
            width_without_head=first.width_without_head,
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

    def output_batches(self, rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for shard in self.shards:
            yield from shard.output_batches(rows)

    def label_batches(self, rows: int | None = None) -> Iterator[np.ndarray]:
        for shard in self.shards:
            yield from shard.label_batches(rows)

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
    from ncinspect.io.store.reader import StoreSource, open_store
    from ncinspect.io.store.statistics import StatsSource

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
            width_without_head=first.width_without_head,
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
        if (src.task, src.d, src.width) != (first.task, first.d, first.width):
            raise differs(
                path,
                "(task, D, width)",
                (src.task, src.d, src.width),
                (first.task, first.d, first.width),
            )
        if not _same_head(src.head, first.head):
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


def _same_head(a: Head | None, b: Head | None) -> bool:
    """Both absent (layer stores without a head), or equal weights and biases."""
    if a is None or b is None:
        return a is None and b is None
    same_bias = (a.bias is None and b.bias is None) or (
        a.bias is not None and b.bias is not None and np.array_equal(a.bias, b.bias)
    )
    return bool(np.array_equal(a.weight, b.weight) and same_bias)
