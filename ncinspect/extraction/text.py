"""Text data: rows of text with a label, tokenized per batch by a Hugging Face tokenizer.

Owns opening a text data source (`open_text`) -- JSON lines (`.jsonl`, `.json`), `.csv` / `.tsv`
(the standard library), `.parquet` (pyarrow) or a `datasets` folder saved with `save_to_disk`
(`datasets.load_from_disk`) -- read in order, up to `--limit` rows; choosing its text column(s)
(one, or two for sentence pairs) and its label column (`TextOptions`); the labels (integers:
classification; floats or lists of floats: regression targets); loading the tokenizer
(`load_tokenizer`: a local folder saved with `save_pretrained`, never a download; a folder whose
`tokenizer_config.json` or `config.json` names code to run (`auto_map`) only with --trust-code);
and `TextBatches`, whose item i is batch i: exactly the tensors the tokenizer returns
(input_ids, attention_mask, token_type_ids when it gives them) as int64, padded to the batch's
longest row and truncated to max_length, with the labels int64 (B,) or targets float32 (B, T).

Every file is untrusted: a JSON line is parsed through `configfiles.load_json` (nesting bounded),
only regular files are opened, and transformers is always told whether remote code is trusted
(it never asks). transformers, pyarrow and datasets are imported only when a text source is
opened; a missing one is a one-line error naming the extra to install.

Never writes files and knows nothing of models or of `data` (which wraps `TextData` into a
`DataSource`). Axes: N rows, B rows of a batch, L tokens, T regression targets.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ncinspect.configfiles import load_json, read_mapping
from ncinspect.errors import DataError, UsageError
from ncinspect.extraction.messages import first_line
from ncinspect.files import inside, regular_file

if TYPE_CHECKING:
    import torch

TextKind = Literal["jsonl", "csv", "parquet", "hf_datasets"]
TEXT_SUFFIXES: dict[str, TextKind] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}
TEXT_KEYS: tuple[str, ...] = ("text", "sentence")
LABEL_KEYS: tuple[str, ...] = ("label", "labels", "target")
MAX_LENGTH_CAP = 512  # the default max length: the tokenizer's model_max_length, at most this
TOKENIZER_FILES: tuple[str, ...] = tuple(
    "tokenizer.json tokenizer_config.json vocab.txt vocab.json tokenizer.model spiece.model".split()
)
HF_DATASET_FILES: tuple[str, ...] = ("dataset_info.json", "state.json", "dataset_dict.json")
HF_EXTRA = "pip install 'ncinspect[hf-data]'"
HF_TOKENIZER_EXTRA = "pip install 'ncinspect[hf]'"


@dataclass(frozen=True)
class TextOptions:
    """The text data options: `text_keys` (--text-key: one column, or two for sentence pairs;
    () = `text`, else `sentence`), `label_key` (--label-key; None = `label`, `labels`,
    `target`), `max_length` (--max-length; None = the tokenizer's model_max_length, at most
    512), `tokenizer` (--tokenizer DIR) and `trust_code` (--trust-code: a tokenizer's own code
    may run)."""

    text_keys: tuple[str, ...] = ()
    label_key: str | None = None
    max_length: int | None = None
    tokenizer: Path | None = None
    trust_code: bool = False

    def given(self) -> list[str]:
        """The options that were set, as named on the command line."""
        named = {
            "--text-key": bool(self.text_keys),
            "--label-key": self.label_key is not None,
            "--max-length": self.max_length is not None,
            "--tokenizer": self.tokenizer is not None,
        }
        return [name for name, set_ in named.items() if set_]


def is_text_file(path: Path) -> bool:
    """Whether `path` is named as text data (.jsonl, .json, .csv, .tsv, .parquet)."""
    return path.suffix.lower() in TEXT_SUFFIXES


def is_hf_dataset(path: Path) -> bool:
    """Whether folder `path` was written by `datasets`' save_to_disk."""
    return path.is_dir() and any(inside(path, path / name) for name in HF_DATASET_FILES)


# ---------------------------------------------------------------------------------------------
# Tables: the column names, the row count and the first rows of some columns


@dataclass
class Table:
    """A text data source read in order: its `names` (columns), `total` rows, `read(columns,
    n)` -> the first n values of each column, and the `split` it names itself (a datasets
    folder holding several splits), with where that came from."""

    kind: TextKind
    names: list[str]
    total: int
    read: Callable[[list[str], int], dict[str, list[Any]]]
    split: tuple[str, str] | None = None


def _records_table(
    kind: TextKind, names: list[str], rows: list[dict[str, Any]], total: int, path: Path
) -> Table:
    def read(columns: list[str], n: int) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {c: [] for c in columns}
        for i, row in enumerate(rows[:n]):
            for c in columns:
                if row.get(c) is None:
                    raise DataError(
                        f"row {i + 1} has no value for '{c}' (it has "
                        f"{', '.join(map(repr, row)) or 'nothing'})",
                        path=path,
                    )
                out[c].append(row[c])
        return out

    return Table(kind, names, total, read)


def _jsonl_table(path: Path, limit: int | None) -> Table:
    """JSON lines: one object per non-blank line; the first object's keys are the columns.
    Lines after the first `limit` rows are counted, not parsed."""
    rows: list[dict[str, Any]] = []
    total = 0
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            total += 1
            if limit is None or total <= limit:
                rows.append(_json_row(line, number, path))
    if not rows:
        raise DataError("holds no rows (expected one JSON object per line)", path=path)
    return _records_table("jsonl", list(rows[0]), rows, total, path)


def _json_row(line: str, number: int, path: Path) -> dict[str, Any]:
    try:
        obj = load_json(line)
    except (json.JSONDecodeError, RecursionError) as exc:
        array = number == 1 and line.lstrip().startswith("[")
        why = "holds a JSON array" if array else f"is not JSON ({first_line(str(exc))})"
        raise DataError(
            f"line {number} {why}; expected JSON lines: one object per line", path=path
        ) from None
    if not isinstance(obj, dict):
        found = "a JSON array" if isinstance(obj, list) else f"a {type(obj).__name__}"
        raise DataError(
            f"line {number} holds {found}; expected JSON lines: one object per line", path=path
        )
    return obj


def _csv_table(path: Path, limit: int | None) -> Table:
    """.csv (comma) or .tsv (tab) with a header row."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows: list[dict[str, Any]] = []
    total = 0
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        try:
            names = [n for n in reader.fieldnames or [] if n]
            for row in reader:
                total += 1
                if limit is None or total <= limit:
                    rows.append(row)
        except csv.Error as exc:
            raise DataError(f"line {reader.line_num} is not CSV ({exc})", path=path) from None
    if not names or not rows:
        raise DataError("holds no rows (expected a header row, then one row per sample)", path=path)
    return _records_table("csv", names, rows, total, path)


def _parquet_table(path: Path) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading .parquet needs pyarrow: {HF_EXTRA}", path=path) from None
    pf = pq.ParquetFile(path)

    def read(columns: list[str], n: int) -> dict[str, list[Any]]:
        table = pf.read(columns=columns).slice(0, n)
        return {c: table.column(c).to_pylist() for c in columns}

    return Table("parquet", list(pf.schema_arrow.names), int(pf.metadata.num_rows), read)


def _hf_table(path: Path, split: str | None) -> Table:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"reading a datasets folder needs datasets: {HF_EXTRA}", path=path
        ) from None
    loaded = datasets.load_from_disk(str(path))
    named: tuple[str, str] | None = None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if split is None and len(splits) != 1:
            raise UsageError(
                f"holds the splits {', '.join(splits)}: pass --split NAME to choose one",
                path=path,
            )
        chosen = split or splits[0]
        if chosen not in loaded:
            raise DataError(f"has no split {chosen!r}; it holds {', '.join(splits)}", path=path)
        loaded = loaded[chosen]
        named = (chosen, "--split" if split else "the datasets folder's one split")
    ds = loaded

    def read(columns: list[str], n: int) -> dict[str, list[Any]]:
        part = ds.select(range(n))
        return {c: list(part[c]) for c in columns}

    return Table("hf_datasets", list(ds.column_names), len(ds), read, named)


def read_table(path: Path, limit: int | None, split: str | None) -> Table:
    """The table of a text data file or datasets folder (DataError when it has no rows)."""
    if path.is_dir():
        table = _hf_table(path, split)
    else:
        regular_file(path, DataError)  # a FIFO or device would block or never end
        kind = TEXT_SUFFIXES[path.suffix.lower()]
        if kind == "jsonl":
            table = _jsonl_table(path, limit)
        elif kind == "csv":
            table = _csv_table(path, limit)
        else:
            table = _parquet_table(path)
    if table.total == 0:
        raise DataError("holds no rows", path=path)
    return table


# ---------------------------------------------------------------------------------------------
# Columns: the text and the labels


def _column(
    given: str | None, defaults: tuple[str, ...], names: list[str], option: str, path: Path
) -> str:
    """The column `given` (it must exist), else the first of `defaults` present."""
    if given is not None:
        if given not in names:
            raise DataError(
                f"{option} {given}: no column {given!r}; the columns are "
                f"{', '.join(map(repr, names))}",
                path=path,
            )
        return given
    found = next((d for d in defaults if d in names), None)
    if found is None:
        raise DataError(
            f"has no column {' or '.join(map(repr, defaults))}; the columns are "
            f"{', '.join(map(repr, names))}; pass {option} COLUMN",
            path=path,
        )
    return found


def text_columns(given: Sequence[str], names: list[str], path: Path) -> tuple[str, ...]:
    """The text column(s): --text-key (one, or two for sentence pairs), else text / sentence."""
    if len(given) > 2:
        raise UsageError(
            f"--text-key takes one column, or two for sentence pairs; got {', '.join(given)}"
        )
    if not given:
        return (_column(None, TEXT_KEYS, names, "--text-key", path),)
    return tuple(_column(key, (), names, "--text-key", path) for key in given)


def _texts(values: list[Any], key: str, path: Path) -> list[str]:
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(
                f"row {i + 1} of column '{key}' holds a {type(value).__name__}, expected text",
                path=path,
            )
    return values


def _label_value(value: Any, row: int, key: str, path: Path) -> int | float | list[float]:
    """One label: an integer (class), a float (target) or a list of floats (targets). Text
    cells (CSV) are read as numbers or a JSON list of numbers."""
    if isinstance(value, str):
        text = value.strip()
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        if text.startswith("["):
            try:
                value = load_json(text)
            except (json.JSONDecodeError, RecursionError):
                pass
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        return [float(v) for v in value]
    shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
    raise DataError(
        f"row {row + 1} of column '{key}' holds {shown}; expected an integer class index, a "
        "float target or a list of float targets",
        path=path,
    )


def labels_of(
    values: list[Any], key: str, path: Path
) -> tuple[np.ndarray, Literal["classification", "regression"]]:
    """int64 (N,) class indices when every label is an integer, else float32 (N, T) targets."""
    parsed = [_label_value(v, i, key, path) for i, v in enumerate(values)]
    if all(isinstance(v, int) for v in parsed):
        return np.asarray(parsed, dtype=np.int64), "classification"
    widths = {len(v) if isinstance(v, list) else 0 for v in parsed}
    if len(widths) != 1:
        raise DataError(
            f"column '{key}' mixes single targets and lists, or lists of different lengths; "
            "expected the same number of targets in every row",
            path=path,
        )
    return np.asarray(parsed, dtype=np.float32).reshape(len(parsed), -1), "regression"


# ---------------------------------------------------------------------------------------------
# The tokenizer


def _remote_code(folder: Path) -> Path | None:
    """The config file of `folder` that names code to run (`auto_map`), else None."""
    for name in ("tokenizer_config.json", "config.json"):
        path = folder / name
        if not path.exists():
            continue
        doc, _ = read_mapping(path)
        if doc is not None and "auto_map" in doc:
            return path
    return None


def load_tokenizer(folder: Path | None, trust_code: bool) -> Any:
    """`AutoTokenizer.from_pretrained(folder, local_files_only=True)`: never a download; code
    the folder names (`auto_map`) runs only with `trust_code`. DataError in one line naming
    --tokenizer when there is no folder, no tokenizer in it, or it does not load."""
    if folder is None:
        raise DataError(
            "text data needs a tokenizer: pass --tokenizer DIR (a save_pretrained folder)"
        )
    if not folder.is_dir():
        raise DataError(
            "--tokenizer: is not a folder (expected one written by save_pretrained)", path=folder
        )
    if not any(inside(folder, folder / name) for name in TOKENIZER_FILES):
        raise DataError(
            f"holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); pass --tokenizer DIR, "
            "a folder written by the tokenizer's save_pretrained",
            path=folder,
        )
    remote = _remote_code(folder)
    if remote is not None and not trust_code:
        raise DataError(
            "names tokenizer code to run (auto_map); pass --trust-code to run it (RUNS CODE "
            "FROM THE FOLDER), or --tokenizer DIR with a tokenizer transformers ships",
            path=remote,
        )
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(f"text data needs transformers: {HF_TOKENIZER_EXTRA}") from None
    try:
        return AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=trust_code
        )
    except Exception as exc:  # noqa: BLE001 - transformers raises anything on a bad folder
        raise DataError(
            f"--tokenizer: cannot load a tokenizer ({type(exc).__name__}: {first_line(str(exc))})",
            path=folder,
        ) from None


def max_length_of(given: int | None, tokenizer: Any) -> int:
    """--max-length, else the tokenizer's model_max_length capped at 512."""
    if given is not None:
        return given
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit > 0:
        return min(limit, MAX_LENGTH_CAP)
    return MAX_LENGTH_CAP


# ---------------------------------------------------------------------------------------------
# Batches


class TextBatches:
    """Map-style dataset whose item i is batch i: (the tokenizer's int64 tensors, labels or
    targets), padded to the batch's longest row and truncated to `max_length`."""

    def __init__(
        self,
        texts: Sequence[list[str]],
        labels: np.ndarray,
        tokenizer: Any,
        max_length: int,
        batch_size: int,
        folder: Path,
    ) -> None:
        self.texts, self.labels, self.tokenizer = texts, labels, tokenizer
        self.max_length, self.batch_size, self.folder = max_length, batch_size, folder

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        import torch

        start = i * self.batch_size
        stop = min(len(self.labels), start + self.batch_size)
        if start >= stop:
            raise IndexError(i)
        parts = [column[start:stop] for column in self.texts]
        try:
            encoded = self.tokenizer(
                *parts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        except Exception as exc:  # noqa: BLE001 - a tokenizer raises anything on odd input
            raise DataError(
                f"the tokenizer failed on rows {start}:{stop} ({type(exc).__name__}: "
                f"{first_line(str(exc))})",
                path=self.folder,
            ) from None
        inputs = {k: v.to(torch.int64) for k, v in encoded.items() if isinstance(v, torch.Tensor)}
        return inputs, torch.from_numpy(self.labels[start:stop])


@dataclass
class TextData:
    """An opened text source, for `data.open_data` to wrap: `n` rows (after --limit), the task
    the labels imply, `split` when the source names it (a datasets folder's split), what was
    done (`provenance`) and `batches(batch_size)`."""

    n: int
    task: Literal["classification", "regression"]
    split: tuple[str, str] | None
    provenance: dict[str, Any]
    batches: Callable[[int], TextBatches]


def open_text(
    path: Path,
    options: TextOptions,
    tokenizer_dir: Path | None,
    split: str | None,
    limit: int | None,
) -> TextData:
    """Open text data at `path` (a file named by TEXT_SUFFIXES or a datasets folder), read
    its first `limit` rows and load the tokenizer: --tokenizer, else `tokenizer_dir` (the
    model's folder). DataError / UsageError in one line naming the file and the fix."""
    table = read_table(path, limit, split)
    text_keys = text_columns(options.text_keys, table.names, path)
    label_key = _column(options.label_key, LABEL_KEYS, table.names, "--label-key", path)
    n = table.total if limit is None else min(limit, table.total)
    values = table.read([*text_keys, label_key], n)
    texts = [_texts(values[k], k, path) for k in text_keys]
    labels, task = labels_of(values[label_key], label_key, path)
    folder = options.tokenizer or tokenizer_dir
    tokenizer = load_tokenizer(folder, options.trust_code)
    assert folder is not None
    if tokenizer.pad_token is None:
        raise DataError(
            "the tokenizer has no padding token (pad_token); per-batch padding needs one: set "
            "it when saving the tokenizer",
            path=folder,
        )
    max_length = max_length_of(options.max_length, tokenizer)
    provenance = {
        "data_kind": table.kind,
        "data_keys": [*text_keys, label_key],
        "text_keys": list(text_keys),
        "label_key": label_key,
        "data_rows": table.total,
        "tokenizer": str(folder),
        "tokenizer_source": "--tokenizer" if options.tokenizer else "the model's folder",
        "tokenizer_class": type(tokenizer).__name__,
        "max_length": max_length,
        "padding": "per batch",
        "truncation": "longest_first",
    }

    def batches(batch_size: int) -> TextBatches:
        return TextBatches(texts, labels, tokenizer, max_length, batch_size, folder)

    return TextData(n, task, table.split, provenance, batches)
