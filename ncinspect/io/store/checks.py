"""Refusing HDF5 datasets that cannot be read safely, before any row is read.

Owns: finding a required dataset (naming what the file holds when it is missing), and refusing
datasets whose header claims more data than the file stores (truncated or crafted headers) or whose
data lives in other files (external or virtual storage). Used by the store readers and by the
extraction's HDF5 data-file reader. Never reads a dataset's values and never allocates its claimed
size.
"""

from __future__ import annotations

import math
from typing import Any

import h5py

from ncinspect.errors import StoreError

# Deflate, the strongest filter h5py ships, compresses at most about 1032:1: the bound used when
# HDF5 cannot count a dataset's chunks (before 1.10.5).
_MAX_FILTER_RATIO = 1100


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
