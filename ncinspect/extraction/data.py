"""Data sources: inputs with their labels or targets, as batches of torch tensors.

Owns: opening a data spec (`open_data`) -- an `.npz` or `.h5`/`.hdf5` file, a CIFAR-10/100
"python version" batch folder, or a `package.module:factory` / `file.py:factory` returning a torch
Dataset -- and reading it lazily in batches: uncompressed `.npz` members are memory-mapped,
compressed ones streamed, HDF5 datasets sliced per batch, so data larger than memory works.
Also the restricted unpickler for CIFAR batches (numpy array reconstruction only).

Knows nothing of models and never writes files. Axes: N samples, T regression targets.

Input arrays are passed to the model as float32 when floating (or bool), int64 when integer
(token ids); CIFAR images become float32 (N, 3, 32, 32) in [0, 1]. Labels are int64 (N,)
(classification); float targets are float32 (N, T) (regression).
"""

from __future__ import annotations

import codecs
import importlib
import inspect
import math
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ncinspect.errors import DataError, check_interrupt, reading
from ncinspect.extraction.checkpoint import call_factory, import_object, is_file_spec, split_spec
from ncinspect.io.npzheaders import npy_headers
from ncinspect.io.sniff import sniff

if TYPE_CHECKING:
    import torch

Task = Literal["classification", "regression"]

INPUT_KEYS: tuple[str, ...] = ("x", "inputs", "data", "images")
LABEL_KEYS: tuple[str, ...] = ("y", "labels", "targets")
CIFAR_LABEL_KEYS: tuple[str, ...] = ("labels", "fine_labels")
DATA_SUFFIXES: tuple[str, ...] = (".npz", ".h5", ".hdf5")


def data_hint(path: str | Path) -> str:
    return f"run `ncinspect inspect {path}` to see what it holds"


# ---------------------------------------------------------------------------------------------
# Lazy arrays: picklable handles that (re)open their file in whichever process reads them.


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
            f"holds {max(available, 0)} bytes for it (truncated or damaged); {data_hint(path)}",
            path=path,
        )


def _npz_members(path: Path) -> dict[str, LazyArray]:
    """Every array of an .npz file as a lazy handle (only the .npy headers are read)."""
    out: dict[str, LazyArray] = {}
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
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
            f"is not a readable .npz archive ({exc}); {data_hint(path)}", path=path
        ) from None
    return out


def _h5_members(path: Path) -> dict[str, LazyArray]:
    import h5py  # noqa: TID251 - reading *input data* files, not feature stores

    from ncinspect.io.store import unstored_claim

    out: dict[str, LazyArray] = {}
    try:
        with h5py.File(path, "r") as f:

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset) and obj.shape:
                    if not (obj.is_virtual or obj.external):  # those live in other files
                        why = unstored_claim(obj)
                        if why is not None:
                            claimed = obj.dtype.itemsize * math.prod(obj.shape)
                            raise DataError(
                                f"array '{name}' claims shape {tuple(obj.shape)} of {obj.dtype} "
                                f"({claimed} bytes) but {why} (truncated or damaged); "
                                f"{data_hint(path)}",
                                path=path,
                            )
                    out[name] = H5Dataset(path, name, tuple(obj.shape), obj.dtype)

            f.visititems(visit)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"is not a readable HDF5 file ({exc}); {data_hint(path)}", path=path
        ) from None
    return out


def array_members(path: str | Path) -> dict[str, LazyArray]:
    """The arrays of an .npz or HDF5 file (by content), as lazy handles."""
    p = Path(path)
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
        return {p.stem: MemmapMember(p, offset, tuple(shape), dtype, bool(fortran))}
    raise DataError(f"is not an .npz or HDF5 data file (detected: {kind}); {data_hint(p)}", path=p)


# ---------------------------------------------------------------------------------------------
# CIFAR "python version" batches


def _numpy_module(name: str) -> Any:
    try:
        return importlib.import_module(f"numpy._core.{name}")  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        return importlib.import_module(f"numpy.core.{name}")


_NP_MULTIARRAY = _numpy_module("multiarray")
_NP_NUMERIC = _numpy_module("numeric")
_CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _CIFAR_GLOBALS[(_mod, "_reconstruct")] = _NP_MULTIARRAY._reconstruct
    _CIFAR_GLOBALS[(_mod, "scalar")] = _NP_MULTIARRAY.scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _CIFAR_GLOBALS[(_mod, "_frombuffer")] = _NP_NUMERIC._frombuffer


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain dicts, lists, strings, bytes, numbers and numpy arrays; any other global
    (a class or function the pickle names) is refused before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _CIFAR_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is not allowed (only numpy array reconstruction)"
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent references are not allowed")


def restricted_load(path: str | Path) -> Any:
    """Load a pickle of plain data and numpy arrays without importing anything else."""
    with open(path, "rb") as fh:
        obj = RestrictedUnpickler(fh, encoding="bytes").load()
    return _str_keys(obj)


def _str_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            (k.decode("latin1") if isinstance(k, bytes) else k): _str_keys(v)
            for k, v in obj.items()
        }
    return obj


def cifar_root(path: Path) -> Path | None:
    """The CIFAR batch folder at `path` (or its one cifar-* subfolder), else None."""
    if not path.is_dir():
        return None
    markers = ("data_batch_1", "test_batch", "train", "test")
    if any((path / m).is_file() for m in markers):
        return path
    subs = [d for d in path.iterdir() if d.is_dir() and d.name.startswith("cifar-")]
    if len(subs) == 1 and any((subs[0] / m).is_file() for m in markers):
        return subs[0]
    return None


def cifar_files(root: Path, split: str) -> list[Path]:
    """The batch files of a split: train -> data_batch_1..5 (or `train`), test -> test_batch
    (or `test`), any other name -> the file of that name."""
    if split == "train":
        batches = sorted(root.glob("data_batch_*"), key=lambda p: p.name)
        found = batches or [root / "train"]
    elif split == "test":
        found = [root / "test_batch"] if (root / "test_batch").is_file() else [root / "test"]
    else:
        found = [root / split]
    found = [p for p in found if p.is_file()]
    if not found:
        names = sorted(p.name for p in root.iterdir() if p.is_file())
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
                f"is not a CIFAR batch of plain data ({exc}); {data_hint(f)}", path=f
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


# ---------------------------------------------------------------------------------------------
# Batches


def _input_dtype(dtype: np.dtype) -> np.dtype:
    if np.issubdtype(dtype, np.floating) or dtype == np.bool_:
        return np.dtype(np.float32)
    if np.issubdtype(dtype, np.integer):
        return np.dtype(np.int64)
    raise ValueError(dtype)


class ArrayBatches:
    """Map-style dataset whose item i is batch i: (inputs, labels or targets) tensors."""

    def __init__(
        self,
        x: LazyArray,
        y: LazyArray,
        n: int,
        batch_size: int,
        task: Task,
        cifar: bool = False,
    ) -> None:
        self.x, self.y, self.n, self.batch_size = x, y, n, batch_size
        self.task, self.cifar = task, cifar

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        start = i * self.batch_size
        stop = min(self.n, start + self.batch_size)
        if start >= stop:
            raise IndexError(i)
        x = self.x.read(start, stop)
        if self.cifar:
            xt = torch.from_numpy(x.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255))
        else:
            xt = torch.from_numpy(np.ascontiguousarray(x, dtype=_input_dtype(x.dtype)))
        y = self.y.read(start, stop)
        if self.task == "classification":
            yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
        else:
            yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32).reshape(len(y), -1))
        return xt, yt


@dataclass
class DataSource:
    """An opened data spec. `n` rows (after --limit; None for an iterable dataset of unknown
    length), `task` inferred from the labels' dtype, `split` the name stores use."""

    spec: str
    kind: Literal["npz", "hdf5", "cifar", "factory"]
    split: str
    n: int | None
    task: Task | None
    provenance: dict[str, Any] = field(default_factory=dict)
    _make_loader: Callable[[int, int, bool], Any] | None = None
    limit: int | None = None

    def batches(
        self, batch_size: int, *, workers: int = 0, pin_memory: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, labels | targets) batches in order; at most `n` rows in all."""
        assert self._make_loader is not None
        loader = self._make_loader(batch_size, workers, pin_memory)
        if self.kind in ("npz", "hdf5"):  # a damaged file can fail at any row: one line
            loader = _guarded(loader, self.spec)
        seen = 0
        for item in loader:
            check_interrupt()  # a Ctrl-C / SIGTERM that Python dropped stops at the next batch
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise DataError(
                    f"--data {self.spec!r}: items are {type(item).__name__}, expected "
                    "(input, label_or_target) pairs"
                )
            xb, yb = item
            if self.limit is not None and seen + len(xb) > self.limit:
                keep = self.limit - seen
                xb, yb = xb[:keep], yb[:keep]
            if len(xb) == 0:
                break
            seen += len(xb)
            yield xb, yb
            if self.limit is not None and seen >= self.limit:
                break


def _guarded(loader: Any, spec: str) -> Iterator[Any]:
    with reading(spec, DataError, "an .npz or HDF5 data file"):
        yield from loader


def _loader(dataset: Any, batch_size: int | None, workers: int, pin: bool) -> Any:
    from torch.utils.data import DataLoader

    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs["prefetch_factor"] = 4
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        **kwargs,
    )


def _pick(members: Mapping[str, LazyArray], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in members), None)


def _member_list(members: Mapping[str, LazyArray]) -> str:
    return ", ".join(f"'{k}' {v.shape} {v.dtype}" for k, v in members.items()) or "no arrays"


def _task_of(dtype: np.dtype, where: str, path: Path) -> Task:
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        return "classification"
    if np.issubdtype(dtype, np.floating):
        return "regression"
    raise DataError(
        f"labels/targets {where} have dtype {dtype}, expected integers (classification) or "
        "floats (regression)",
        path=path,
    )


def open_data(
    spec: str | Path,
    *,
    keys: tuple[str, str] | None = None,
    args: Mapping[str, Any] | None = None,
    split: str | None = None,
    limit: int | None = None,
    code_paths: Sequence[str | Path] = (),
) -> DataSource:
    """Open a data spec: an .npz / .h5 / .hdf5 file, a CIFAR batch folder, or a factory.

    `keys` = (inputs, labels) names (default: x/inputs/data/images and y/labels/targets);
    `args` go to a factory as keyword arguments, with `split=` when it accepts one; `limit`
    keeps the first rows. The split defaults to the split a data file's name states
    (`digits_test.npz` -> `test`, else the whole stem) and to the factory's default (else
    "train") for factories and CIFAR folders.
    Raises DataError naming the file, the keys found and the fix.
    """
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be >= 1, got {limit}")
    text = str(spec)
    path = Path(text)
    if path.exists():
        if path.is_dir():
            root = cifar_root(path)
            if root is None:
                raise DataError(
                    "is a directory but not a CIFAR 'python version' batch folder "
                    "(data_batch_1..5 / test_batch, or train / test); expected an .npz or "
                    ".h5 file, a CIFAR folder or package.module:factory",
                    path=path,
                )
            with reading(root, DataError, "a CIFAR batch folder"):
                return _open_cifar(root, text, keys, split or "train", limit)
        with reading(path, DataError, "an .npz or HDF5 data file"):
            return _open_arrays(path, text, keys, split, limit)
    if ":" in text and not (text.endswith(DATA_SUFFIXES)):
        return _open_factory(text, args or {}, split, limit, code_paths)
    raise DataError("no such file or directory (and not a module:factory spec)", path=path)


SPLIT_WORDS: tuple[str, ...] = ("train", "test", "val", "valid", "validation", "eval", "dev")


def split_from_name(stem: str) -> str:
    """The split a data file's name states (`digits_test` -> `test`), else the whole stem."""
    last = re.split(r"[_\-.]", stem)[-1].lower()
    return last if last in SPLIT_WORDS else stem


def _open_arrays(
    path: Path, spec: str, keys: tuple[str, str] | None, split: str | None, limit: int | None
) -> DataSource:
    if path.stat().st_size == 0:
        raise DataError("file is empty (0 bytes)", path=path)
    members = array_members(path)
    if keys is not None:
        x_key, y_key = keys
        absent = [k for k in keys if k not in members]
        if absent:
            raise DataError(
                f"--data-keys {','.join(keys)}: no array {', '.join(map(repr, absent))}; it holds "
                f"{_member_list(members)}; {data_hint(path)}",
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
                f"has no {' and no '.join(missing)}; it holds {_member_list(members)}; pass "
                f"--data-keys INPUTS,LABELS; {data_hint(path)}",
                path=path,
            )
        x_key, y_key = xk, yk
    x, y = members[x_key], members[y_key]
    if not x.shape or not y.shape or x.shape[0] != y.shape[0]:
        raise DataError(
            f"inputs '{x_key}' {x.shape} and labels '{y_key}' {y.shape} differ in their "
            f"number of rows; {data_hint(path)}",
            path=path,
        )
    if len(y.shape) > 2:
        raise DataError(
            f"labels/targets '{y_key}' have shape {y.shape}, expected (N,) or (N, T)", path=path
        )
    try:
        _input_dtype(x.dtype)
    except ValueError:
        raise DataError(
            f"inputs '{x_key}' have dtype {x.dtype}, expected numbers", path=path
        ) from None
    task = _task_of(y.dtype, f"'{y_key}'", path)
    if task == "classification" and len(y.shape) != 1:
        raise DataError(
            f"integer labels '{y_key}' have shape {y.shape}, expected (N,) class indices",
            path=path,
        )
    n = x.shape[0] if limit is None else min(limit, x.shape[0])
    if n == 0:
        raise DataError(f"inputs '{x_key}' have 0 rows", path=path)
    kind: Literal["npz", "hdf5"] = "hdf5" if sniff(path) == "hdf5" else "npz"

    def make(batch_size: int, workers: int, pin: bool) -> Any:
        return _loader(ArrayBatches(x, y, n, batch_size, task), None, workers, pin)

    return DataSource(
        spec=spec,
        kind=kind,
        split=split or split_from_name(path.stem),
        n=n,
        task=task,
        provenance={
            "data": spec,
            "data_kind": kind,
            "data_keys": [x_key, y_key],
            "data_rows": x.shape[0],
        },
        _make_loader=make,
    )


def _open_cifar(
    root: Path, spec: str, keys: tuple[str, str] | None, split: str, limit: int | None
) -> DataSource:
    if keys is not None and keys[0] != "data":
        raise DataError(f"CIFAR batches keep images under 'data', not {keys[0]!r}", path=root)
    x, y = read_cifar(root, split, keys[1] if keys else None)
    n = len(x) if limit is None else min(limit, len(x))
    xa, ya = InMemory(x, f"{root}:data"), InMemory(y, f"{root}:labels")

    def make(batch_size: int, workers: int, pin: bool) -> Any:
        return _loader(
            ArrayBatches(xa, ya, n, batch_size, "classification", cifar=True), None, workers, pin
        )

    return DataSource(
        spec=spec,
        kind="cifar",
        split=split,
        n=n,
        task="classification",
        provenance={
            "data": spec,
            "data_kind": "cifar",
            "data_files": [p.name for p in cifar_files(root, split)],
            "data_rows": len(x),
        },
        _make_loader=make,
    )


def _label_task(label: Any) -> Task | None:
    import torch

    if isinstance(label, bool):
        return None
    if isinstance(label, int | np.integer):
        return "classification"
    if isinstance(label, float | np.floating):
        return "regression"
    if isinstance(label, torch.Tensor | np.ndarray):
        dt = label.dtype
        if dt in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
            return "classification"
        if isinstance(dt, torch.dtype) and dt.is_floating_point:
            return "regression"
        if isinstance(dt, np.dtype):
            if np.issubdtype(dt, np.integer):
                return "classification"
            if np.issubdtype(dt, np.floating):
                return "regression"
    if isinstance(label, list | tuple) and label and isinstance(label[0], float):
        return "regression"
    return None


def _open_factory(
    spec: str,
    args: Mapping[str, Any],
    split: str | None,
    limit: int | None,
    code_paths: Sequence[str | Path],
) -> DataSource:
    from torch.utils.data import IterableDataset, Subset

    target, _ = split_spec(spec) if ":" in spec else (spec, "")
    base = [Path(target).parent] if is_file_spec(target) else []
    factory = import_object(
        spec, what="--data", code_paths=code_paths, base_dirs=base, error=DataError
    )
    if not callable(factory):
        raise DataError(f"--data {spec!r} names a {type(factory).__name__}, not a factory")
    kwargs = dict(args)
    name = split
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    accepts_split = "split" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )
    if accepts_split and "split" not in kwargs:
        default = params["split"].default if "split" in params else inspect.Parameter.empty
        if split is not None:
            kwargs["split"] = split
        elif default is inspect.Parameter.empty or not isinstance(default, str):
            kwargs["split"] = name = "train"
        else:
            name = default
    elif "split" in kwargs:
        name = str(kwargs["split"])
    dataset = call_factory(factory, kwargs, spec=spec, what="--data", error=DataError)
    iterable = isinstance(dataset, IterableDataset)
    if not iterable and not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise DataError(
            f"--data {spec!r} returned a {type(dataset).__name__}, expected a torch Dataset "
            "(with __getitem__ and __len__) or an IterableDataset"
        )
    n: int | None = None
    task: Task | None = None
    if not iterable:
        total = len(dataset)
        if total == 0:
            raise DataError(f"--data {spec!r}: the dataset is empty")
        n = total if limit is None else min(limit, total)
        if n < total:
            dataset = Subset(dataset, range(n))
        first = dataset[0]
        if not isinstance(first, list | tuple) or len(first) != 2:
            raise DataError(
                f"--data {spec!r}: items are {type(first).__name__}, expected "
                "(input, label_or_target) pairs"
            )
        task = _label_task(first[1])

    def make(batch_size: int, workers: int, pin: bool) -> Any:
        return _loader(dataset, batch_size, workers, pin)

    return DataSource(
        spec=spec,
        kind="factory",
        split=name or "train",
        n=n,
        task=task,
        provenance={"data": spec, "data_kind": "factory", "data_args": dict(kwargs)},
        _make_loader=make,
        limit=limit if iterable else None,
    )
