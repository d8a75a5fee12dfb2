"""The one format sniffer: what a file is, from its first bytes (and a zip archive's member names).

Owns: `Format`, `sniff`, and the two readings it is built on (`file_head`, `zip_members`), so a
reader with wider rules of its own (the dump reader) applies them to the same readings instead of
opening the file its own way. Every reader that must tell formats apart (the checkpoint loader,
the dump reader, discovery, `inspect`) asks here. Opens files read-only, reads at most 16 bytes
and a zip directory; never parses or loads a payload.

Asks `files.regular_file` (what ncinspect agrees to open at all; every opener calls it before
opening: a FIFO, device, socket or directory is refused, so nothing blocks or reads forever; a
symlink named on the command line is followed); walks use `files.inside`.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Literal

from ncinspect.files import regular_file

Format = Literal[
    "safetensors",  # safetensors file
    "torch",  # torch.save zip archive (state dict, wrapper dict or pickled module)
    "torch_legacy",  # torch.save with _use_new_zipfile_serialization=False
    "torchscript",  # torch.jit.save archive
    "export",  # torch.export.save archive (.pt2)
    "hf_model_dir",  # a transformers model directory (never returned by `sniff`, which reads files)
    "hdf5",  # HDF5 (a feature store or a data file)
    "npz",  # numpy .npz (a data file or a feature dump)
    "npy",  # a single numpy array
    "pickle",  # a plain Python pickle (e.g. a CIFAR batch)
    "json",
    "empty",
    "corrupt_zip",  # starts like a zip archive but has no central directory (truncated)
    "unknown",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"  # a local file header: a zip archive with members
_EMPTY_ZIP_SIGNATURE = b"PK\x05\x06"  # the end-of-directory record alone: an empty archive
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def sniff(path: str | Path) -> Format:
    """The file's format, from its first bytes (and a zip archive's member names).

    `InputError` for anything but a regular file (`regular_file`), "unknown" for one that
    cannot be read."""
    p = Path(path)
    if p.exists():
        regular_file(p)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return "unknown"
    if size == 0:
        return "empty"
    if head.startswith(ZIP_SIGNATURE) or head.startswith(_EMPTY_ZIP_SIGNATURE):
        names = zip_members(p)
        if names is None:
            return "corrupt_zip"
        return _zip_kind(names)
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch_legacy"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    return "unknown"


def file_head(path: str | Path, size: int = 16) -> bytes:
    """The file's first `size` bytes (fewer for a shorter file; none when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""


def zip_members(path: str | Path) -> list[str] | None:
    """The member names of a zip archive, or None when its directory cannot be read."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except Exception:  # noqa: BLE001 - zipfile raises many types on a damaged directory
        return None


def _zip_kind(names: list[str]) -> Format:
    base = {n.rsplit("/", 1)[-1] for n in names}
    if "archive_format" in base and any("/models/" in n or n.startswith("models/") for n in names):
        return "export"
    if "constants.pkl" in base and any("/code/" in n or n.startswith("code/") for n in names):
        return "torchscript"
    if "data.pkl" in base:
        return "torch"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    return "unknown"
