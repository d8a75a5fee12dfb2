"""The .npy headers inside an .npz archive, read without loading any array.

Owns: parsing each member's header and the byte count its shape claims, so readers can refuse a
truncated or crafted header before allocating anything. A leaf: no ncinspect imports, no errors
of its own (callers turn zipfile/numpy exceptions into their error type).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NpyHeader:
    """One `.npy` member: its zip entry, key (name without `.npy`), and parsed header."""

    info: zipfile.ZipInfo
    key: str
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    header_bytes: int  # length of the .npy header; the data follows it

    @property
    def claimed(self) -> int:
        """Bytes the header's shape and dtype claim."""
        total = int(self.dtype.itemsize)
        for extent in self.shape:
            total *= extent
        return total

    @property
    def available(self) -> int:
        """Bytes the archive holds for the data (uncompressed size minus the header)."""
        return max(self.info.file_size - self.header_bytes, 0)


def npy_headers(zf: zipfile.ZipFile) -> Iterator[NpyHeader]:
    """Every `.npy` member of an open archive, in archive order."""
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            continue
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            header = fh.tell()
        yield NpyHeader(
            info=info,
            key=info.filename[: -len(".npy")],
            shape=tuple(int(s) for s in shape),
            fortran=bool(fortran),
            dtype=dtype,
            header_bytes=header,
        )
