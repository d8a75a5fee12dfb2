"""The .npy headers inside an .npz archive, read without loading any array.

Owns: parsing each member's header and the byte count its shape claims, and the bound on what a
member may inflate to (`inflation_problem`), so readers can refuse a truncated or crafted header,
or a zip bomb, before allocating anything. A leaf: no ncinspect imports, no errors of its own
(callers turn zipfile/numpy exceptions, and the reasons returned here, into their error type).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# Deflate compresses at most about 1032:1; stored members hold their bytes as they are.
MAX_DEFLATE_RATIO = 1100
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}


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
    def problem(self) -> str | None:
        """Why this member cannot be read safely (a zip bomb, a header claiming more than the
        member holds, or an object dtype), or None."""
        why = inflation_problem(self.info)
        if why is not None:
            return why
        if self.dtype.hasobject:
            return "has dtype object (object arrays need unpickling)"
        if self.claimed > self.available:
            return (
                f"claims shape {self.shape} of {self.dtype} ({self.claimed} bytes) but the "
                f"archive holds {self.available} bytes for it (truncated or damaged)"
            )
        return None

    @property
    def available(self) -> int:
        """Bytes the archive holds for the data (uncompressed size minus the header)."""
        return max(self.info.file_size - self.header_bytes, 0)


def inflation_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member's claimed uncompressed size cannot be trusted, or None: only stored and
    deflate members are read (bzip2 and lzma inflate far more), a stored member must hold its
    bytes, and a deflated one may claim at most deflate's ratio (1100:1) of its compressed bytes.
    Reading stops at the claimed size, so this bounds what the member can allocate."""
    method = _METHODS.get(info.compress_type)
    if method is None:
        return f"is compressed with method {info.compress_type} (only stored and deflate are read)"
    limit = info.compress_size if method == "stored" else info.compress_size * MAX_DEFLATE_RATIO
    if info.file_size > limit + 1024:  # slack for tiny members' fixed overhead
        return (
            f"claims {info.file_size} bytes uncompressed from {info.compress_size} bytes "
            f"({method}; more than {MAX_DEFLATE_RATIO}:1 is a zip bomb or a damaged archive)"
        )
    return None


def npy_headers(zf: zipfile.ZipFile) -> Iterator[NpyHeader]:
    """Every `.npy` member of an open archive, in archive order (each member's inflation is
    checked before its header is read)."""
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            continue
        why = inflation_problem(info)
        if why is not None:
            raise ValueError(f"member '{info.filename}' {why}")
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
