"""Array files as lazy handles: the arrays of an .npz, .npy or HDF5 data file, read by rows.

Owns `array_members(path)` -> name -> `LazyArray` (`shape`, `dtype`, `read(start, stop)`): an
uncompressed .npz member or .npy file is memory-mapped, a compressed member streamed block by
block, an HDF5 dataset sliced per read, so that data larger than memory works. Handles are
picklable and reopen their file in whichever process reads them (DataLoader workers). An array
whose header claims more bytes than the file holds, an .npz member inflating beyond deflate's
ratio, and an HDF5 file that is not self-contained (links, external or virtual storage) or whose
filters inflate beyond the bound of `io.store.checks` are refused before any row is read. Only
regular files are opened (`sniff.regular_file`: a FIFO or device is refused).

Never unpickles (object arrays are refused), never writes files, knows nothing of models. These
are *input data* files; feature stores are `io.store`'s.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ncinspect.errors import DataError
from ncinspect.extraction.messages import hint
from ncinspect.files import regular_file
from ncinspect.io.npzheaders import inflation_problem, npy_headers
from ncinspect.io.sniff import sniff


class LazyArray:
    """A read-only array on disk: `shape`, `dtype`, `read(start, stop)` rows."""

    shape: tuple[int, ...]
    dtype: np.dtype
    where: str

    def read(self, start: int, stop: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getstate__(self) -> dict[str, Any]:
        # Open handles stay behind; a worker process reopens the file itself.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_h")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class InMemory(LazyArray):
    def __init__(self, array: np.ndarray, where: str) -> None:
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = array.dtype
        self.where = where

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.array[start:stop])


class MemmapMember(LazyArray):
    """An uncompressed .npz member (or .npy file) mapped from disk."""

    def __init__(
        self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype, fortran: bool
    ) -> None:
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, dtype
        self.fortran = fortran
        self.where = str(path)
        self._h: np.memmap | None = None

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._h is None:
            if math.prod(self.shape) == 0:
                return np.zeros((max(0, stop - start), *self.shape[1:]), dtype=self.dtype)
            self._h = np.memmap(
                self.path,
                dtype=self.dtype,
                mode="r",
                offset=self.offset,
                shape=self.shape,
                order="F" if self.fortran else "C",
            )
        return np.array(self._h[start:stop])


class StreamMember(LazyArray):
    """A compressed, C-ordered .npz member read row-block by row-block (forward reads are
    cheap; going back restarts decompression)."""

    def __init__(
        self, path: Path, member: str, header: int, shape: tuple[int, ...], dtype: np.dtype
    ) -> None:
        self.path, self.member, self.header = path, member, header
        self.shape, self.dtype = shape, dtype
        self.where = f"{path}:{member}"
        self._hzip: zipfile.ZipFile | None = None
        self._hfile: Any = None
        self._hpid = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._hfile is None or self._hpid != os.getpid():
            self._hzip = zipfile.ZipFile(self.path)
            self._hfile = self._hzip.open(self.member)
            self._hpid = os.getpid()
        row = int(math.prod(self.shape[1:])) * self.dtype.itemsize
        self._hfile.seek(self.header + start * row)
        raw = self._hfile.read((stop - start) * row)
        if len(raw) != (stop - start) * row:
            raise DataError(
                f"array '{self.member}' is truncated: rows {start}:{stop} are missing",
                path=self.path,
            )
        return np.frombuffer(bytearray(raw), dtype=self.dtype).reshape(
            (stop - start, *self.shape[1:])
        )


class H5Dataset(LazyArray):
    """An HDF5 dataset sliced per read (the file is opened once per process)."""

    def __init__(self, path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.name, self.shape, self.dtype = path, name, shape, dtype
        self.where = f"{path}:{name}"
        self._h: Any = None
        self._hpid = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._h is None or self._hpid != os.getpid():
            import h5py  # noqa: TID251 - reading *input data* files, not feature stores

            self._h = h5py.File(self.path, "r")[self.name]
            self._hpid = os.getpid()
        return np.asarray(self._h[start:stop])


def _check_claim(
    path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype, available: int
) -> None:
    """Refuse an array whose header claims more bytes than the file holds for it (truncated or
    crafted), before any row is read: nothing of the claimed size is allocated."""
    claimed = int(dtype.itemsize)
    for extent in shape:
        claimed *= int(extent)
    if claimed > max(available, 0):
        raise DataError(
            f"array '{name}' claims shape {shape} of {dtype} ({claimed} bytes) but the file "
            f"holds {max(available, 0)} bytes for it (truncated or damaged); {hint(path)}",
            path=path,
        )


def _npz_members(path: Path) -> dict[str, LazyArray]:
    """Every array of an .npz file as a lazy handle (only the .npy headers are read)."""
    out: dict[str, LazyArray] = {}
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
            for info in zf.infolist():
                why = inflation_problem(info)
                if why is not None:
                    raise DataError(f"member '{info.filename}' {why}; {hint(path)}", path=path)
            for member in npy_headers(zf):
                info, key, shape, dtype = member.info, member.key, member.shape, member.dtype
                fortran, header = member.fortran, member.header_bytes
                if dtype.hasobject:
                    raise DataError(
                        f"array '{key}' has dtype object; ncinspect reads numeric arrays only "
                        "(object arrays need unpickling)",
                        path=path,
                    )
                _check_claim(path, key, shape, dtype, info.file_size - header)
                if info.compress_type == zipfile.ZIP_STORED:
                    raw.seek(info.header_offset)
                    local = raw.read(30)
                    name_len, extra_len = struct.unpack("<HH", local[26:30])
                    offset = info.header_offset + 30 + name_len + extra_len + header
                    out[key] = MemmapMember(path, offset, shape, dtype, bool(fortran))
                elif not fortran or len(shape) <= 1:
                    out[key] = StreamMember(path, info.filename, header, shape, dtype)
                else:
                    with np.load(path) as npz:
                        out[key] = InMemory(npz[key], f"{path}:{key}")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise DataError(
            f"is not a readable .npz archive ({exc}); {hint(path)}", path=path
        ) from None
    return out


def _h5_members(path: Path) -> dict[str, LazyArray]:
    import h5py  # noqa: TID251 - reading *input data* files, not feature stores

    from ncinspect.io.store.checks import (
        check_self_contained,
        decompression_claim,
        unstored_claim,
    )

    out: dict[str, LazyArray] = {}
    try:
        with h5py.File(path, "r") as f:
            check_self_contained(f, path, DataError)  # no links, external or virtual storage

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset) and obj.shape:
                    why = unstored_claim(obj) or decompression_claim(obj)
                    if why is not None:
                        claimed = obj.dtype.itemsize * math.prod(obj.shape)
                        raise DataError(
                            f"array '{name}' claims shape {tuple(obj.shape)} of {obj.dtype} "
                            f"({claimed} bytes) but {why} (truncated, damaged or crafted); "
                            f"{hint(path)}",
                            path=path,
                        )
                    out[name] = H5Dataset(path, name, tuple(obj.shape), obj.dtype)

            f.visititems(visit)
    except (OSError, ValueError) as exc:
        raise DataError(f"is not a readable HDF5 file ({exc}); {hint(path)}", path=path) from None
    return out


def array_members(path: str | Path) -> dict[str, LazyArray]:
    """The arrays of an .npz or HDF5 file (by content), as lazy handles."""
    p = Path(path)
    regular_file(p, DataError)  # a FIFO or device would block or never end
    kind = sniff(p)
    if kind == "npz" or (kind == "unknown" and p.suffix == ".npz"):
        return _npz_members(p)
    if kind == "hdf5":
        return _h5_members(p)
    if kind == "npy":
        with open(p, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
        if dtype.hasobject:
            raise DataError(
                f"array '{p.stem}' has dtype object; ncinspect reads numeric arrays only", path=p
            )
        shape = tuple(int(s) for s in shape)
        _check_claim(p, p.stem, shape, dtype, p.stat().st_size - offset)
        return {p.stem: MemmapMember(p, offset, shape, dtype, bool(fortran))}
    raise DataError(f"is not an .npz or HDF5 data file (detected: {kind}); {hint(p)}", path=p)
