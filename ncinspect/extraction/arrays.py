"""Array data files: the arrays of an .npz, .npy or HDF5 file as lazy handles read by rows, and
the arrays of CIFAR batch folders.

Owns `array_members(path)` -> name -> `LazyArray` (`shape`, `dtype`, `read(start, stop)`): an
uncompressed .npz member or .npy file is memory-mapped, a compressed member streamed block by
block, an HDF5 dataset sliced per read, so that data larger than memory works. Handles are
picklable and reopen their file in whichever process reads them (DataLoader workers). An array
whose header claims more bytes than the file holds, an .npz member inflating beyond deflate's
ratio, and an HDF5 file that is not self-contained (links, external or virtual storage) or whose
filters inflate beyond the bound of `io.store.checks` are refused before any row is read. Only
regular files are opened (`sniff.regular_file`: a FIFO or device is refused).

Which arrays a data file's inputs and labels are (`choose_arrays`): the default names (inputs
x / inputs / data / images, labels y / labels / targets) or `--data-keys INPUTS,LABELS`, or
several arrays as the model's keyword inputs (`--input-keys`): `keyed_inputs` checks that each
named array exists, holds numbers and has the same N rows; `read_keyed` reads rows of all of
them, integers and bools as int64 (token ids, attention masks), floating as float32.

CIFAR-10/100 "python version" batch folders (`cifar_root`, `cifar_files`, `read_cifar`): only
regular files (and `cifar-*` subfolders) whose real path stays in the folder are read
(`files.inside`): a batch file linking elsewhere, a FIFO or a device is passed over. A batch is
unpickled from memory, bounded by its file size, with its arrays' shapes checked against the
bytes they hold (`trust.restricted_load`), and held in memory (`InMemory`).

Never unpickles anything but CIFAR batches through `trust.restricted_load` (object arrays are
refused), never writes files, knows nothing of models. These are *input data* files; feature
stores are `io.store`'s.
"""

from __future__ import annotations

import math
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ncinspect.errors import DataError
from ncinspect.extraction.messages import hint
from ncinspect.extraction.trust import restricted_load
from ncinspect.files import inside, regular_file
from ncinspect.io.npzheaders import inflation_problem, npy_headers
from ncinspect.io.sniff import sniff

INPUT_KEYS: tuple[str, ...] = ("x", "inputs", "data", "images")
LABEL_KEYS: tuple[str, ...] = ("y", "labels", "targets")
CIFAR_LABEL_KEYS: tuple[str, ...] = ("labels", "fine_labels")


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


# ---------------------------------------------------------------------------------------------
# Several arrays as the model's keyword inputs (--input-keys)


def member_list(members: Mapping[str, LazyArray]) -> str:
    """The arrays of a file as shown in messages: `'x' (N, D) float32, ...`."""
    return ", ".join(f"'{k}' {v.shape} {v.dtype}" for k, v in members.items()) or "no arrays"


def keyed_dtype(dtype: np.dtype) -> np.dtype:
    """int64 for integers and bools (token ids, attention masks), float32 for floating;
    ValueError for anything else."""
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        return np.dtype(np.int64)
    if np.issubdtype(dtype, np.floating):
        return np.dtype(np.float32)
    raise ValueError(dtype)


def keyed_inputs(
    members: Mapping[str, LazyArray], names: Sequence[str], path: Path
) -> dict[str, LazyArray]:
    """The arrays `names` (--input-keys) of a data file, in that order: each present, numeric
    and with the same number of rows (DataError naming the file and what it holds otherwise)."""
    option = f"--input-keys {','.join(names)}"
    absent = [n for n in names if n not in members]
    if absent:
        raise DataError(
            f"{option}: no array {', '.join(map(repr, absent))}; it holds "
            f"{member_list(members)}; {hint(path)}",
            path=path,
        )
    chosen = {n: members[n] for n in names}
    if len({a.shape[0] if a.shape else -1 for a in chosen.values()}) != 1:
        raise DataError(
            f"{option}: the arrays differ in their number of rows ({member_list(chosen)}); "
            f"expected the same N for every input; {hint(path)}",
            path=path,
        )
    for name, array in chosen.items():
        try:
            keyed_dtype(array.dtype)
        except ValueError:
            raise DataError(
                f"{option}: array '{name}' has dtype {array.dtype}, expected integers, bools "
                "or floats",
                path=path,
            ) from None
    return chosen


def read_keyed(arrays: Mapping[str, LazyArray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows start:stop of every array, as int64 (integers, bools) or float32 (floating)."""
    return {
        name: np.ascontiguousarray(a.read(start, stop), dtype=keyed_dtype(a.dtype))
        for name, a in arrays.items()
    }


def choose_arrays(
    members: Mapping[str, LazyArray],
    keys: tuple[str, str] | None,
    input_keys: Sequence[str] | None,
    path: Path,
) -> tuple[LazyArray | dict[str, LazyArray], tuple[str, ...], str]:
    """(the inputs, their names, the labels' name) of a data file: the arrays of `input_keys`
    as a dict (labels: the LABELS of `--data-keys ,LABELS` or a default name), else one input
    array by `keys` or the default names."""
    if input_keys:
        return (
            keyed_inputs(members, input_keys, path),
            tuple(input_keys),
            _label_key(members, keys, path),
        )
    x_key, y_key = _array_keys(members, keys, path)
    return members[x_key], (x_key,), y_key


def _pick(members: Mapping[str, LazyArray], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in members), None)


def _array_keys(
    members: Mapping[str, LazyArray], keys: tuple[str, str] | None, path: Path
) -> tuple[str, str]:
    """The (inputs, labels) array names: `keys` (each must exist), else the default names."""
    if keys is not None:
        x_key, y_key = keys
        absent = [k for k in keys if k not in members]
        if absent:
            raise DataError(
                f"--data-keys {','.join(keys)}: no array {', '.join(map(repr, absent))}; it holds "
                f"{member_list(members)}; {hint(path)}",
                path=path,
            )
    else:
        xk = _pick(members, INPUT_KEYS)
        yk = _pick(members, LABEL_KEYS)
        if xk is None or yk is None:
            missing = []
            if xk is None:
                missing.append(f"inputs (looked for {', '.join(map(repr, INPUT_KEYS))})")
            if yk is None:
                missing.append(f"labels/targets (looked for {', '.join(map(repr, LABEL_KEYS))})")
            raise DataError(
                f"has no {' and no '.join(missing)}; it holds {member_list(members)}; pass "
                f"--data-keys INPUTS,LABELS; {hint(path)}",
                path=path,
            )
        x_key, y_key = xk, yk
    return x_key, y_key


def _label_key(members: Mapping[str, LazyArray], keys: tuple[str, str] | None, path: Path) -> str:
    """The labels' array name beside --input-keys: the LABELS of `--data-keys ,LABELS`, else
    a default name."""
    y_key = keys[1] if keys is not None else _pick(members, LABEL_KEYS)
    if y_key is None or y_key not in members:
        looked = repr(y_key) if y_key else ", ".join(map(repr, LABEL_KEYS))
        raise DataError(
            f"has no labels/targets (looked for {looked}); it holds {member_list(members)}; "
            f"pass --data-keys ,LABELS; {hint(path)}",
            path=path,
        )
    return y_key


# ---------------------------------------------------------------------------------------------
# CIFAR "python version" batches


def cifar_root(path: Path) -> Path | None:
    """The CIFAR batch folder at `path` (or its one cifar-* subfolder), else None."""
    if not path.is_dir():
        return None
    markers = ("data_batch_1", "test_batch", "train", "test")
    if any(inside(path, path / m) for m in markers):
        return path
    real = path.resolve()
    subs = [
        d
        for d in path.iterdir()
        if d.name.startswith("cifar-") and d.is_dir() and d.resolve().is_relative_to(real)
    ]
    if len(subs) == 1 and any(inside(path, subs[0] / m) for m in markers):
        return subs[0]
    return None


def cifar_files(root: Path, split: str) -> list[Path]:
    """The batch files of a split: train -> data_batch_1..5 (or `train`), test -> test_batch
    (or `test`), any other name -> the file of that name."""
    if split == "train":
        batches = sorted(
            (p for p in root.glob("data_batch_*") if inside(root, p)), key=lambda p: p.name
        )
        found = batches or [root / "train"]
    elif split == "test":
        found = [root / "test_batch"] if inside(root, root / "test_batch") else [root / "test"]
    else:
        found = [root / split]
    found = [p for p in found if inside(root, p)]
    if not found:
        names = sorted(p.name for p in root.iterdir() if inside(root, p))
        raise DataError(
            f"CIFAR folder has no batch file for split {split!r} (train: data_batch_1..5 or "
            f"'train'; test: test_batch or 'test'); it holds {', '.join(names) or 'nothing'}",
            path=root,
        )
    return found


def read_cifar(root: Path, split: str, label_key: str | None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3072) and int64 labels (N,) of one split, read with the restricted
    unpickler."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for f in cifar_files(root, split):
        try:
            obj = restricted_load(f)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise DataError(
                f"is not a CIFAR batch of plain data ({exc}); {hint(f)}", path=f
            ) from None
        if not isinstance(obj, dict) or "data" not in obj:
            keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise DataError(f"CIFAR batch has no 'data' entry (found: {keys})", path=f)
        keys_to_try = (label_key,) if label_key else CIFAR_LABEL_KEYS
        key = next((k for k in keys_to_try if k in obj), None)
        if key is None:
            raise DataError(
                f"CIFAR batch has no labels under {' or '.join(map(repr, keys_to_try))} "
                f"(found: {', '.join(map(str, obj))}); pass --data-keys data,LABELS",
                path=f,
            )
        x = np.asarray(obj["data"])
        y = np.asarray(obj[key])
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
            raise DataError(
                f"'data' has shape {x.shape} dtype {x.dtype}, expected uint8 (N, 3072)", path=f
            )
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"'{key}' has shape {y.shape} dtype {y.dtype}, expected {x.shape[0]} integers",
                path=f,
            )
        xs.append(x)
        ys.append(y.astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys)
