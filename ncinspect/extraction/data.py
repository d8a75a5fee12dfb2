"""Data sources: inputs with their labels or targets, as batches of torch tensors.

Owns opening a data spec (`open_data`) -- an `.npz` or `.h5`/`.hdf5` file (read lazily through
`arrays`), a CIFAR-10/100 "python version" batch folder (unpickled by `trust.restricted_load`),
or a `package.module:factory` / `file.py:factory` returning a torch Dataset -- and reading it in
order, in batches (`DataSource.batches`), with `--limit` applied.

Knows nothing of models and never writes files. Axes: N samples, T regression targets.

Paths: a data file or folder named on the command line is followed; inside a CIFAR folder only
regular files (and `cifar-*` subfolders) whose real path stays in the folder are read
(`sniff.inside`): a batch file linking elsewhere, a FIFO or a device is passed over. A batch is
unpickled from memory, bounded by its file size, with its arrays' shapes checked against the
bytes they hold (`trust.restricted_load`).

Input arrays come out as float32 when floating (or bool), int64 when integer with fewer than
3 dimensions (token ids), and uint8 when they are raw images (uint8 with 3 or more dimensions;
CIFAR images as (N, 3, 32, 32)): a source's `preprocess` (`preprocess.Preprocess`, set for each
checkpoint by `with_preprocess`) turns each batch into what the model was trained on, and raw
images are never yielded without one. Labels are int64 (N,) (classification); float targets are
float32 (N, T) (regression).

The split a store is named after is never guessed: `--split`, a factory's `split` argument or
its string default, the data file's name, or a CIFAR folder's train batches; `split_source` in
the provenance says which.
"""

from __future__ import annotations

import inspect
import pickle
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ncinspect.errors import DataError, UsageError, check_interrupt, reading
from ncinspect.extraction.arrays import InMemory, LazyArray, array_members
from ncinspect.extraction.messages import hint
from ncinspect.extraction.preprocess import Inputs, Preprocess, missing_choice
from ncinspect.extraction.trust import (
    call_factory,
    import_object,
    is_file_spec,
    restricted_load,
    split_spec,
)
from ncinspect.files import inside, regular_file
from ncinspect.io.sniff import sniff

if TYPE_CHECKING:
    import torch

Task = Literal["classification", "regression"]

INPUT_KEYS: tuple[str, ...] = ("x", "inputs", "data", "images")
LABEL_KEYS: tuple[str, ...] = ("y", "labels", "targets")
CIFAR_LABEL_KEYS: tuple[str, ...] = ("labels", "fine_labels")
DATA_SUFFIXES: tuple[str, ...] = (".npz", ".h5", ".hdf5")


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


# ---------------------------------------------------------------------------------------------
# Batches


def _input_dtype(dtype: np.dtype, ndim: int = 2) -> np.dtype:
    """float32 for floating (and bool) inputs, uint8 for raw images (kept for `Preprocess`),
    int64 for other integers (token ids); ValueError for anything else."""
    if np.issubdtype(dtype, np.floating) or dtype == np.bool_:
        return np.dtype(np.float32)
    if dtype == np.uint8 and ndim >= 3:
        return np.dtype(np.uint8)
    if np.issubdtype(dtype, np.integer):
        return np.dtype(np.int64)
    raise ValueError(dtype)


def inputs_of(x: LazyArray) -> Inputs:
    """What an input array is: raw images (uint8, 3 or more dims), float, or integer."""
    if x.dtype == np.uint8 and len(x.shape) >= 3:
        return Inputs("raw", x.shape)
    if np.issubdtype(x.dtype, np.integer):
        return Inputs("integer", x.shape)
    return Inputs("float", x.shape)


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
        if self.cifar:  # rows of 3 x 1024 channel planes
            x = x.reshape(-1, 3, 32, 32)
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=_input_dtype(x.dtype, x.ndim)))
        y = self.y.read(start, stop)
        if self.task == "classification":
            yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
        else:
            yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32).reshape(len(y), -1))
        return xt, yt


@dataclass
class DataSource:
    """An opened data spec. `n` rows (after --limit; None for an iterable dataset of unknown
    length), `task` inferred from the labels' dtype, `split` the name stores use, `inputs` what
    the inputs are and `preprocess` what is done to them (`with_preprocess`)."""

    spec: str
    kind: Literal["npz", "hdf5", "cifar", "factory"]
    split: str
    n: int | None
    task: Task | None
    provenance: dict[str, Any] = field(default_factory=dict)
    _make_loader: Callable[[int, int, bool], Any] | None = None
    limit: int | None = None
    inputs: Inputs = field(default_factory=Inputs)
    preprocess: Preprocess | None = None

    def with_preprocess(self, preprocess: Preprocess) -> DataSource:
        """This source with `preprocess` applied to every batch and recorded in its provenance."""
        return replace(
            self, preprocess=preprocess, provenance={**self.provenance, **preprocess.describe()}
        )

    def batches(
        self, batch_size: int, *, workers: int = 0, pin_memory: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, labels | targets) batches in order; at most `n` rows in all."""
        assert self._make_loader is not None
        if self.inputs.kind == "raw" and self.preprocess is None:
            raise missing_choice(self.spec)
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
            yield (xb if self.preprocess is None else self.preprocess.apply(xb)), yb
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
    (`digits_test.npz` -> `test`, else the whole stem), to a CIFAR folder's train batches, and
    to a factory's string default for its `split` parameter; a factory that cannot report its
    split needs `split` (UsageError), and `split` must agree with `args["split"]`.
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
                return _open_cifar(root, text, keys, split, limit)
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


def _file_split(split: str | None, stem: str) -> tuple[str, str]:
    """A data file's split and where it came from: --split, a split word in the file name, or
    (no split word) the whole stem."""
    if split is not None:
        return split, "--split"
    named = split_from_name(stem)
    return named, "file name" if named != stem else "file stem (no split word in the name)"


def _open_arrays(
    path: Path, spec: str, keys: tuple[str, str] | None, split: str | None, limit: int | None
) -> DataSource:
    if regular_file(path, DataError).st_size == 0:  # a FIFO or device: refused unopened
        raise DataError("file is empty (0 bytes)", path=path)
    members = array_members(path)
    if keys is not None:
        x_key, y_key = keys
        absent = [k for k in keys if k not in members]
        if absent:
            raise DataError(
                f"--data-keys {','.join(keys)}: no array {', '.join(map(repr, absent))}; it holds "
                f"{_member_list(members)}; {hint(path)}",
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
                f"--data-keys INPUTS,LABELS; {hint(path)}",
                path=path,
            )
        x_key, y_key = xk, yk
    x, y = members[x_key], members[y_key]
    if not x.shape or not y.shape or x.shape[0] != y.shape[0]:
        raise DataError(
            f"inputs '{x_key}' {x.shape} and labels '{y_key}' {y.shape} differ in their "
            f"number of rows; {hint(path)}",
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

    name, source = _file_split(split, path.stem)
    return DataSource(
        spec=spec,
        kind=kind,
        split=name,
        n=n,
        task=task,
        provenance={
            "data": spec,
            "data_kind": kind,
            "data_keys": [x_key, y_key],
            "data_rows": x.shape[0],
            "split_source": source,
        },
        _make_loader=make,
        inputs=inputs_of(x),
    )


def _open_cifar(
    root: Path, spec: str, keys: tuple[str, str] | None, given: str | None, limit: int | None
) -> DataSource:
    if keys is not None and keys[0] != "data":
        raise DataError(f"CIFAR batches keep images under 'data', not {keys[0]!r}", path=root)
    split = given or "train"
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
            "split_source": "--split" if given else "default (the train batches)",
        },
        _make_loader=make,
        inputs=Inputs("raw", (len(x), 3, 32, 32), "nchw"),
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
    name, source = _factory_split(factory, spec, kwargs, split)
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
        split=name,
        n=n,
        task=task,
        provenance={
            "data": spec,
            "data_kind": "factory",
            "data_args": dict(kwargs),
            "split_source": source,
        },
        _make_loader=make,
        limit=limit if iterable else None,
    )


def _factory_split(
    factory: Callable[..., Any], spec: str, kwargs: dict[str, Any], split: str | None
) -> tuple[str, str]:
    """The split a factory returns and where that is known from; adds `split=` to `kwargs` when
    the factory accepts it. Never guessed: --data-arg split=X and --split Y must agree, and a
    factory with no string default for `split` (or no `split` parameter) needs --split."""
    if "split" in kwargs:
        named = str(kwargs["split"])
        if split is not None and split != named:
            raise UsageError(
                f"--data-arg split={named} and --split {split} disagree; give the split once"
            )
        return named, "--split" if split is not None else "factory argument"
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    param = params.get("split")
    keywords = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if split is not None:
        if param is not None or keywords:
            kwargs["split"] = split
        return split, "--split"
    if param is not None and isinstance(param.default, str):
        return param.default, "factory default"
    why = (
        "has a split argument without a string default"
        if param is not None
        else "takes no split argument"
    )
    raise UsageError(
        f"--data {spec!r} {why}, so ncinspect cannot tell which split it returns: pass --split "
        "train|test|... (the name the stores get)"
    )
