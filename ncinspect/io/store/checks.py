"""Refusing HDF5 datasets that cannot be read safely, before any row is read.

Owns: finding a required dataset (naming what the file holds when it is missing), refusing a
file whose link tree leaves it (`check_self_contained`: only hard links to groups and to datasets
stored contiguous, chunked or compact in this file; no soft, external or user-defined links, no
external or virtual storage, no named datatypes, at most `MAX_DEPTH` groups deep and
`MAX_LINKS` links), and refusing datasets whose header claims more
data than the file stores (truncated or crafted headers), whose filters would expand beyond what
deflate can (`decompression_claim`), or whose dtype is not a plain number or bool (`dtype_problem`).
Used by every HDF5 reader: the store readers, the extraction's HDF5 data-file reader and
`inspect`. Never reads a dataset's values, never follows a link, and never allocates a claimed
size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ncinspect.errors import InputError, StoreError

# Deflate, the strongest filter h5py ships, compresses at most about 1032:1: the bound used when
# HDF5 cannot count a dataset's chunks (before 1.10.5), and the most a filtered dataset may claim
# per byte of the file (`decompression_claim`).
_MAX_FILTER_RATIO = 1100
# The most one filtered chunk may decompress to: HDF5 inflates a whole chunk to read any row.
MAX_CHUNK_BYTES = 256 << 20
# Dataset storage layouts that keep the data in this file (not virtual).
_LAYOUTS = {
    h5py.h5d.CONTIGUOUS: "contiguous",
    h5py.h5d.CHUNKED: "chunked",
    h5py.h5d.COMPACT: "compact",
}
# How deep groups may nest (a store uses 3 levels): each object is opened by its path from the
# root, so a chain of N nested groups (about 130 bytes each) costs N^2 lookups to walk: 800 in
# 100 KB took over 10 s to check.
MAX_DEPTH = 32
# How many links the walk looks at: each opens an object (about 20 bytes of link in the file).
MAX_LINKS = 1 << 16
# Element kinds ncinspect reads: bool, signed and unsigned integers, floats.
NUMERIC_KINDS = "biuf"


def check_self_contained(
    f: h5py.File, path: str | Path, error: type[InputError] = StoreError
) -> None:
    """Refuse a file that refers to anything outside itself, before any dataset is read.

    An allowlist over every link, walked without following any (`visititems_links` descends
    hard links only): each must be a hard link to a group or to a dataset whose storage is
    contiguous, chunked or compact in this file. A soft link (which can point anywhere, or out
    of the file through an external link), an external link, a user-defined link, external raw
    storage (`/dev/zero`, another file), a virtual dataset, or a committed datatype is refused
    with `error` naming it; so is a file nested deeper than `MAX_DEPTH` groups or holding more
    than `MAX_LINKS` links (the walk opens each object by its path: a time bomb otherwise).
    """

    seen = 0

    def visit(name: str, link: Any) -> tuple[str, str] | None:
        # Returning a value stops the walk (raising inside an h5py callback is not clean).
        nonlocal seen
        seen += 1
        if seen > MAX_LINKS:
            return name, f"is link number {seen}: the file holds more than {MAX_LINKS} links"
        if name.count("/") >= MAX_DEPTH:
            return name[:200] + "...", f"is nested more than {MAX_DEPTH} groups deep"
        if isinstance(link, h5py.ExternalLink):
            return name, f"is an external link to '{link.path}' in {link.filename!r}"
        if isinstance(link, h5py.SoftLink):
            return name, f"is a soft link to '{link.path}'"
        if not isinstance(link, h5py.HardLink):
            return name, f"is a {type(link).__name__} (a user-defined link)"
        why = _object_problem(f[name])
        return None if why is None else (name, why)

    found = f.visititems_links(visit)
    if found is not None:
        name, why = found
        raise error(
            f"'{name}' {why}; ncinspect reads self-contained HDF5 files only (hard links to "
            "groups and datasets stored in the file)",
            path=path,
        )


def _object_problem(obj: Any) -> str | None:
    if isinstance(obj, h5py.Group):
        return None
    if not isinstance(obj, h5py.Dataset):
        return f"is a {type(obj).__name__}, not a group or dataset"
    if obj.is_virtual:
        return "refers to data in other files (virtual storage)"
    if obj.external:
        return f"refers to data in other files (external storage) such as {obj.external[0][0]!r}"
    layout = obj.id.get_create_plist().get_layout()
    if layout not in _LAYOUTS:
        return f"has storage layout {layout} (not contiguous, chunked or compact)"
    return None


def dtype_problem(dtype: np.dtype) -> str | None:
    """Why `dtype` is not a plain number (bool, integer, float), or None when it is: strings,
    complex numbers, object references, compounds, subarrays and opaque bytes are refused."""
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        return f"has dtype {dtype}, expected numbers (bool, integer or float)"
    if h5py.check_dtype(ref=dtype) is not None or h5py.check_dtype(vlen=dtype) is not None:
        return f"has dtype {dtype} (references or variable length), expected numbers"
    return None


def decompression_claim(ds: h5py.Dataset) -> str | None:
    """Why `ds`'s filters would expand it beyond what can be allowed, or None.

    Filtered (compressed) chunks are inflated whole, so each may hold at most `MAX_CHUNK_BYTES`,
    and the dataset may claim at most deflate's ratio (1100:1) times the bytes of the whole file
    (the file, not the dataset: scale-offset stores a constant chunk in a few bytes, and a store
    of exactly collapsed features is legitimate, but its labels or targets occupy the file). A
    few kilobytes claiming gigabytes is refused before anything is inflated.
    """
    if ds.chunks is None or ds.id.get_create_plist().get_nfilters() == 0:
        return None
    chunk = ds.dtype.itemsize * math.prod(int(c) for c in ds.chunks)
    if chunk > MAX_CHUNK_BYTES:
        return (
            f"its compressed chunks {tuple(int(c) for c in ds.chunks)} inflate to {chunk} bytes "
            f"each (at most {MAX_CHUNK_BYTES} are read)"
        )
    claimed = ds.dtype.itemsize * math.prod(int(s) for s in ds.shape)
    size = max(int(ds.file.id.get_filesize()), int(ds.id.get_storage_size()))
    if claimed > size * _MAX_FILTER_RATIO:
        return (
            f"it is compressed to {size} bytes of file or less, more than {_MAX_FILTER_RATIO}:1 "
            "(a decompression bomb)"
        )
    return None


def check_total_claim(
    f: h5py.File, path: str | Path, datasets: dict[str, Any], error: type[InputError] = StoreError
) -> None:
    """Refuse `datasets`, all read whole, when together they claim more than deflate's ratio
    times the file's bytes: each compressed byte of the file belongs to one dataset, so the ratio
    bounds their sum, not only each one (`decompression_claim`). Twenty datasets of 100 MB each,
    every one within 1100:1 of a 100 KB file, would otherwise inflate to 2 GB."""
    total = 0
    for ds in datasets.values():
        if ds is not None:
            total += ds.dtype.itemsize * math.prod(int(s) for s in ds.shape)
    size = int(f.id.get_filesize())
    if total > size * _MAX_FILTER_RATIO:
        raise error(
            f"its {len(datasets)} datasets claim {total} bytes together, more than "
            f"{_MAX_FILTER_RATIO} times the file's {size} bytes (a decompression bomb)",
            path=path,
        )


def dataset_names(f: h5py.File) -> list[str]:
    """The paths of every dataset in the file (for messages that say what was found)."""
    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def dataset(f: h5py.File, path: str, name: str, required: bool) -> Any:
    """Dataset `name`, or None when it is absent and not required; `StoreError` when a required
    one is missing (listing the datasets found) or `name` is a group."""
    if name not in f:
        if required:
            found = sorted(dataset_names(f))
            raise StoreError(
                f"dataset '{name}' is missing; found datasets {found or 'none'}", path=path
            )
        return None
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise StoreError(f"'{name}' is a group, expected a dataset", path=path)
    return obj


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
    path: str | Path, datasets: dict[str, Any], error: type[InputError] = StoreError
) -> None:
    """Refuse datasets whose shape claims more data than the file holds (truncated or crafted
    headers; `unstored_claim`) or than its filters may inflate to (`decompression_claim`),
    datasets stored in other files (external or virtual), and datasets of other than plain
    numbers (`dtype_problem`), before reading any rows."""
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
        bad_dtype = dtype_problem(ds.dtype)
        if bad_dtype is not None:
            raise error(f"dataset '{name}' {bad_dtype}", path=path)
        bomb = decompression_claim(ds)
        if bomb is not None:
            claimed = ds.dtype.itemsize * math.prod(int(s) for s in ds.shape)
            raise error(
                f"dataset '{name}' claims shape {tuple(int(s) for s in ds.shape)} ({claimed} "
                f"bytes of {ds.dtype}) but {bomb}; re-create it with less compression",
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


def layer_without_head(f: h5py.File, attrs: dict[str, Any], path: str) -> bool:
    """Whether the store is a layer store without a head (`extract --layers`: no /head group, a
    non-empty string attribute `layer`). Any other store must have 'head/weight': a store that
    lost its head is an error, never a silent switch to the head-free metrics."""
    if "head" in f:
        return False
    layer = attrs.get("layer")
    if layer is None:
        return False  # `dataset(..., "head/weight", True)` then names what is missing
    if not isinstance(layer, str) or not layer:
        raise StoreError(f"attribute 'layer' is {layer!r}, expected a module name", path=path)
    return True


def headless_width(attrs: dict[str, Any], task: str, path: str) -> int:
    """K (attribute k) or T (attribute t) of a layer store without a head: an integer >= 1."""
    name = "k" if task == "classification" else "t"
    value = attrs.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StoreError(
            f"attribute '{name}' is {value!r}, expected an integer >= 1 (a layer store without "
            f"a head keeps its {'K' if name == 'k' else 'T'} there)",
            path=path,
        )
    return value
