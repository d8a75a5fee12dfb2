"""Data sources: inputs with their labels or targets, as batches of torch tensors.

Owns opening a data spec (`open_data`) -- an `.npz` or `.h5`/`.hdf5` file (read lazily through
`arrays`), a CIFAR-10/100 "python version" batch folder (read by `arrays`, unpickled by
`trust.restricted_load`), text data (`.jsonl`, `.json`, `.csv`, `.tsv`, `.parquet` or a
`datasets` folder, read and tokenized by `text`), or a `package.module:factory` /
`file.py:factory` returning a torch Dataset (called by `factorydata`) -- and reading it in
order, in batches (`DataSource.batches`), with `--limit` applied. With --next-token an `.npz` /
`.h5` file's token ids or text data become windows of tokens (`tokens`): a batch is B windows,
its labels (B, C) the next tokens, and `DataSource.rows` counts positions, not windows.

A batch's inputs are one tensor, or a dict of tensors with the same first dimension B (the
model's keyword inputs: the arrays `--input-keys` names, the tokenizer's tensors of text data,
or a factory's dict items); `batch_rows` and `take_rows` read and cut either.

Knows nothing of models and never writes files. Axes: N samples, T regression targets.

Paths: a data file or folder named on the command line is followed (what is read inside a
CIFAR folder: `arrays`).

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

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np

from ncinspect.errors import DataError, UsageError, check_interrupt, reading
from ncinspect.extraction.arrays import INPUT_KEYS as INPUT_KEYS  # re-exported
from ncinspect.extraction.arrays import LABEL_KEYS as LABEL_KEYS  # re-exported
from ncinspect.extraction.arrays import (
    InMemory,
    LazyArray,
    array_members,
    choose_arrays,
    cifar_files,
    cifar_root,
    read_cifar,
    read_keyed,
)
from ncinspect.extraction.messages import hint
from ncinspect.extraction.preprocess import Inputs, Preprocess, missing_choice
from ncinspect.extraction.text import TextOptions, is_hf_dataset, is_text_file, open_text
from ncinspect.extraction.tokens import (
    NextTokenOptions,
    TokenData,
    open_token_arrays,
    open_token_text,
)
from ncinspect.files import regular_file
from ncinspect.io.sniff import sniff

if TYPE_CHECKING:
    import torch

Task = Literal["classification", "regression"]
ModelInputs: TypeAlias = "torch.Tensor | dict[str, torch.Tensor]"  # one tensor, or keyword inputs
DATA_SUFFIXES: tuple[str, ...] = (".npz", ".h5", ".hdf5")


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
    """Map-style dataset whose item i is batch i: (inputs, labels or targets) tensors; the
    inputs are a dict of tensors when `x` maps names to arrays (--input-keys)."""

    def __init__(
        self,
        x: LazyArray | Mapping[str, LazyArray],
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

    def __getitem__(self, i: int) -> tuple[ModelInputs, torch.Tensor]:
        import torch

        start = i * self.batch_size
        stop = min(self.n, start + self.batch_size)
        if start >= stop:
            raise IndexError(i)
        xt: ModelInputs
        if isinstance(self.x, Mapping):
            xt = {k: torch.from_numpy(v) for k, v in read_keyed(self.x, start, stop).items()}
        else:
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
    the inputs are and `preprocess` what is done to them (`with_preprocess`); `input_names`
    the arrays the inputs come from, `keyword_inputs` whether they reach the model as keyword
    arguments (a dict per batch). Next-token data (`row_counts` set): `n` counts windows and
    `row_counts` the rows (positions) each window gives."""

    spec: str
    kind: Literal["npz", "hdf5", "cifar", "factory", "text"]
    split: str
    n: int | None
    task: Task | None
    provenance: dict[str, Any] = field(default_factory=dict)
    _make_loader: Callable[[int, int, bool], Any] | None = None
    limit: int | None = None
    inputs: Inputs = field(default_factory=Inputs)
    preprocess: Preprocess | None = None
    input_names: tuple[str, ...] = ()
    keyword_inputs: bool = False
    row_counts: np.ndarray | None = None  # --next-token: rows per window (`tokens`)

    @property
    def rows(self) -> int | None:
        """The rows a pass yields: `n`, or for next-token data the positions of its windows."""
        return self.n if self.row_counts is None else int(self.row_counts.sum())

    def with_preprocess(self, preprocess: Preprocess) -> DataSource:
        """This source with `preprocess` applied to every batch and recorded in its provenance;
        keyword inputs are used as stored (UsageError when --normalize or --layout acts)."""
        if self.keyword_inputs and _acts(preprocess):
            raise _keyword_preprocess(self.spec)
        return replace(
            self, preprocess=preprocess, provenance={**self.provenance, **preprocess.describe()}
        )

    def batches(
        self, batch_size: int, *, workers: int = 0, pin_memory: bool = False
    ) -> Iterator[tuple[ModelInputs, torch.Tensor]]:
        """(inputs, labels | targets) batches in order; at most `n` rows in all."""
        assert self._make_loader is not None
        if self.inputs.kind == "raw" and self.preprocess is None:
            raise missing_choice(self.spec)
        loader = self._make_loader(batch_size, workers, pin_memory)
        if self.kind in ("npz", "hdf5", "text"):  # a damaged file can fail at any row: one line
            what = "text data" if self.kind == "text" else "an .npz or HDF5 data file"
            loader = _guarded(loader, self.spec, what)
        seen = 0
        for item in loader:
            check_interrupt()  # a Ctrl-C / SIGTERM that Python dropped stops at the next batch
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise DataError(
                    f"--data {self.spec!r}: items are {type(item).__name__}, expected "
                    "(input, label_or_target) pairs"
                )
            xb, yb = item
            rows = batch_rows(xb, self.spec)
            if self.limit is not None and seen + rows > self.limit:
                keep = self.limit - seen
                xb, yb, rows = take_rows(xb, keep), yb[:keep], keep
            if rows == 0:
                break
            seen += rows
            yield self._preprocessed(xb), yb
            if self.limit is not None and seen >= self.limit:
                break

    def _preprocessed(self, xb: ModelInputs) -> ModelInputs:
        if self.preprocess is None:
            return xb
        if isinstance(xb, dict):  # a factory's dict items: used as stored
            if _acts(self.preprocess):
                raise _keyword_preprocess(self.spec)
            return xb
        return self.preprocess.apply(xb)


def _acts(preprocess: Preprocess) -> bool:
    """Whether `preprocess` changes its inputs at all."""
    norm = preprocess.normalization
    return preprocess.scale or preprocess.layout is not None or bool(norm and norm.mean)


def _keyword_preprocess(spec: str) -> UsageError:
    return UsageError(
        "--normalize and --layout apply to one input array; keyword inputs (several arrays, "
        "text data, a factory's dicts) are used as stored",
        path=spec,
    )


def batch_rows(xb: Any, spec: str = "") -> int:
    """The rows B of a batch's inputs: a tensor's first dimension, or that of every tensor of a
    dict (DataError naming `spec` when they differ or a value is not a tensor)."""
    if not isinstance(xb, dict):
        return len(xb)
    import torch

    shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in xb.items()}
    rows = {s[0] if s else None for s in shapes.values()}
    if not shapes or len(rows) != 1 or None in rows:
        shown = ", ".join(f"{k!r} {s or type(xb[k]).__name__}" for k, s in shapes.items())
        raise DataError(
            f"--data {spec!r}: dict inputs must be tensors with the same number of rows; got "
            f"{shown or 'an empty dict'}"
        )
    return int(next(iter(rows)))  # type: ignore[arg-type]


def take_rows(xb: ModelInputs, keep: int) -> ModelInputs:
    """The first `keep` rows of a batch's inputs (each tensor of a dict)."""
    if isinstance(xb, dict):
        return {k: v[:keep] for k, v in xb.items()}
    return xb[:keep]


def _guarded(loader: Any, spec: str, what: str) -> Iterator[Any]:
    with reading(spec, DataError, what):
        yield from loader


def torch_loader(dataset: Any, batch_size: int | None, workers: int, pin: bool) -> Any:
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
    input_keys: Sequence[str] | None = None,
    text: TextOptions | None = None,
    tokenizer_dir: Path | None = None,
    next_token: NextTokenOptions | None = None,
) -> DataSource:
    """Open a data spec: an .npz / .h5 / .hdf5 file, text data, a CIFAR batch folder, or a
    factory; with `next_token` (--next-token) a file's token ids or text data as windows
    (`tokens`).

    `keys` = (inputs, labels) names (default: x/inputs/data/images and y/labels/targets; inputs
    "" with `input_keys`); `input_keys` names arrays that become the model's keyword inputs;
    `text` holds the text data options and `tokenizer_dir` the tokenizer used when
    `text.tokenizer` is None (the model's folder; ignored by other data);
    `args` go to a factory as keyword arguments, with `split=` when it accepts one; `limit`
    keeps the first rows. The split defaults to the split a data file's name states
    (`digits_test.npz` -> `test`, else the whole stem), to a CIFAR folder's train batches, and
    to a factory's string default for its `split` parameter; a factory that cannot report its
    split needs `split` (UsageError), and `split` must agree with `args["split"]`.
    Raises DataError naming the file, the keys found and the fix.
    """
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be >= 1, got {limit}")
    text_options = text or TextOptions()
    name = str(spec)
    path = Path(name)
    is_text = path.exists() and (is_hf_dataset(path) if path.is_dir() else is_text_file(path))
    _refuse_options(name, is_text, keys, input_keys, text_options)
    if next_token is not None:
        return _open_windows(path, name, is_text, split, next_token, text_options, tokenizer_dir)
    if is_text:
        with reading(path, DataError, "text data"):
            return _open_text(path, name, split, limit, text_options, tokenizer_dir)
    if path.exists():
        if path.is_dir():
            root = cifar_root(path)
            if root is None:
                raise DataError(
                    "is a directory but not a CIFAR 'python version' batch folder "
                    "(data_batch_1..5 / test_batch, or train / test) or a datasets folder "
                    "(save_to_disk); expected an .npz or .h5 file, text data, a CIFAR folder or "
                    "package.module:factory",
                    path=path,
                )
            with reading(root, DataError, "a CIFAR batch folder"):
                return _open_cifar(root, name, keys, split, limit)
        with reading(path, DataError, "an .npz or HDF5 data file"):
            return _open_arrays(path, name, keys, split, limit, input_keys)
    if ":" in name and not (name.endswith(DATA_SUFFIXES)):
        from ncinspect.extraction.factorydata import open_factory

        return open_factory(name, args or {}, split, limit, code_paths)
    raise DataError("no such file or directory (and not a module:factory spec)", path=path)


def _refuse_options(
    spec: str,
    is_text: bool,
    keys: tuple[str, str] | None,
    input_keys: Sequence[str] | None,
    text: TextOptions,
) -> None:
    """UsageError for options the data kind does not take: --data-keys / --input-keys name
    arrays of .npz / .h5 files, the text options belong to text data."""
    if is_text and (keys is not None or input_keys):
        option = "--data-keys" if keys is not None else "--input-keys"
        raise UsageError(
            f"{option} names arrays of .npz / .h5 files; text data takes --text-key and "
            "--label-key",
            path=spec,
        )
    if not is_text and text.given():
        raise UsageError(
            f"{', '.join(text.given())} apply to text data (.jsonl, .json, .csv, .tsv, "
            ".parquet or a datasets folder)",
            path=spec,
        )
    if input_keys and keys is not None and keys[0]:
        raise UsageError(
            f"--data-keys {','.join(keys)} and --input-keys both name the inputs; pass "
            f"--data-keys ,{keys[1]} (the labels only) with --input-keys"
        )
    path = Path(spec)
    if input_keys and not path.is_file() and (path.exists() or ":" in spec):
        raise UsageError(
            "--input-keys names arrays of .npz / .h5 files (a factory's items can be dicts)",
            path=spec,
        )


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
    path: Path,
    spec: str,
    keys: tuple[str, str] | None,
    split: str | None,
    limit: int | None,
    input_keys: Sequence[str] | None = None,
) -> DataSource:
    if regular_file(path, DataError).st_size == 0:  # a FIFO or device: refused unopened
        raise DataError("file is empty (0 bytes)", path=path)
    members = array_members(path)
    x, names, y_key = choose_arrays(members, keys, input_keys, path)
    first, y = members[names[0]], members[y_key]
    if not first.shape or not y.shape or first.shape[0] != y.shape[0]:
        raise DataError(
            f"inputs '{names[0]}' {first.shape} and labels '{y_key}' {y.shape} differ in their "
            f"number of rows; {hint(path)}",
            path=path,
        )
    if len(y.shape) > 2:
        raise DataError(
            f"labels/targets '{y_key}' have shape {y.shape}, expected (N,) or (N, T)", path=path
        )
    try:
        _input_dtype(first.dtype)
    except ValueError:
        raise DataError(
            f"inputs '{names[0]}' have dtype {first.dtype}, expected numbers", path=path
        ) from None
    task = _task_of(y.dtype, f"'{y_key}'", path)
    if task == "classification" and len(y.shape) != 1:
        raise DataError(
            f"integer labels '{y_key}' have shape {y.shape}, expected (N,) class indices",
            path=path,
        )
    n = first.shape[0] if limit is None else min(limit, first.shape[0])
    if n == 0:
        raise DataError(f"inputs '{names[0]}' have 0 rows", path=path)
    kind: Literal["npz", "hdf5"] = "hdf5" if sniff(path) == "hdf5" else "npz"

    def make(batch_size: int, workers: int, pin: bool) -> Any:
        return torch_loader(ArrayBatches(x, y, n, batch_size, task), None, workers, pin)

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
            "data_keys": [*names, y_key],
            **({"input_keys": list(names)} if input_keys else {}),
            "data_rows": first.shape[0],
            "split_source": source,
        },
        _make_loader=make,
        inputs=Inputs() if isinstance(x, dict) else inputs_of(x),
        input_names=names,
        keyword_inputs=isinstance(x, dict),
    )


def _open_text(
    path: Path,
    spec: str,
    split: str | None,
    limit: int | None,
    options: TextOptions,
    tokenizer_dir: Path | None,
) -> DataSource:
    found = open_text(path, options, tokenizer_dir, split, limit)
    name, source = found.split or _file_split(split, path.stem if path.is_file() else path.name)
    columns = tuple(found.provenance["text_keys"])

    def make(batch_size: int, workers: int, pin: bool) -> Any:
        return torch_loader(found.batches(batch_size), None, workers, pin)

    return DataSource(
        spec=spec,
        kind="text",
        split=name,
        n=found.n,
        task=found.task,
        provenance={"data": spec, **found.provenance, "split_source": source},
        _make_loader=make,
        input_names=columns,
        keyword_inputs=True,
    )


def _open_windows(
    path: Path,
    spec: str,
    is_text: bool,
    split: str | None,
    options: NextTokenOptions,
    text: TextOptions,
    tokenizer_dir: Path | None,
) -> DataSource:
    """--next-token data: an .npz / .h5 file's token ids, or text data, as windows."""
    found: TokenData
    kind: Literal["npz", "hdf5", "text"]
    if is_text:
        with reading(path, DataError, "text data"):
            found = open_token_text(path, options, text, tokenizer_dir, split)
        kind, data_kind = "text", found.provenance["data_kind"]
    elif path.is_file():
        if regular_file(path, DataError).st_size == 0:
            raise DataError("file is empty (0 bytes)", path=path)
        with reading(path, DataError, "an .npz or HDF5 data file"):
            found = open_token_arrays(path, options)
        kind = data_kind = "hdf5" if sniff(path) == "hdf5" else "npz"
    elif not path.exists() and ":" not in spec:
        raise DataError("no such file or directory", path=path)
    else:
        raise UsageError(
            "--next-token reads token ids (input_ids, an optional attention_mask) from an .npz "
            "or .h5 file, or text data (.jsonl, .json, .csv, .tsv, .parquet, a datasets folder)",
            path=spec,
        )
    stem = path.stem if path.is_file() else path.name
    name, source = found.split or _file_split(split, stem)

    def make(batch_size: int, workers: int, pin: bool) -> Any:
        return torch_loader(found.batches(batch_size), None, workers, pin)

    return DataSource(
        spec=spec,
        kind=kind,
        split=name,
        n=found.n,
        task="classification",
        provenance={
            "data": spec,
            "data_kind": data_kind,
            **found.provenance,
            "split_source": source,
        },
        _make_loader=make,
        input_names=("input_ids", "attention_mask"),
        keyword_inputs=True,
        row_counts=found.row_counts,
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
        return torch_loader(
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
