"""Next-token data (--next-token): token ids cut into windows, each position with a next token
one row whose label is that token.

Owns `NextTokenOptions` (--context-length, --max-tokens), opening the two kinds of data
(`open_token_arrays`: an `.npz` / `.h5` file's `input_ids` (N, L) integers and its optional
`attention_mask` (N, L); `open_token_text`: text data, each document tokenized alone by the
model's tokenizer), the windows (consecutive, no overlap) and the rows each window gives
(`TokenData.row_counts`, after --max-tokens), and the map-style datasets whose item i is batch
i: ({input_ids, attention_mask} int64 (B, C), labels int64 (B, C)) where labels[b, t] is the
next token input_ids[b, t + 1] at a row and -1 elsewhere.

The rules, in one place:
- a row is a position t with attention_mask 1 at t and at t + 1 inside the same window: the
  last position of a window, padding, and a position before padding have no row;
- token-id arrays: each row of input_ids is cut into consecutive windows of C = --context-length
  positions (default: the whole row, C = L), the last one narrower when C does not divide L and
  padded on the right with attention_mask 0; the arrays are used as stored otherwise (their own
  padding, left or right, from attention_mask; no attention_mask: every token is real);
- text: each document (one text column) is tokenized alone, with the special tokens the
  tokenizer adds by default (Llama's BOS; GPT-2 adds none), never truncated, and cut into
  consecutive windows of C tokens, the last one shorter and padded on the right; no EOS is
  appended. A window of one token (no row) is left out;
- an EOS token is a token like any other: as an input it is context, as a label its class is
  its id;
- --max-tokens M keeps the first M rows in data order (window by window, positions in order):
  the window that reaches M runs whole and keeps its first rows, the windows after it are
  neither read nor run (text: documents after it are not tokenized).

Knows nothing of models, never writes files; numpy only (torch when a batch is made).
Axes: N rows of input_ids (documents for text), L their length, C tokens per window, B windows
of a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ncinspect.errors import DataError, UsageError
from ncinspect.extraction.arrays import LazyArray, array_members, member_list
from ncinspect.extraction.messages import first_line, hint

if TYPE_CHECKING:
    import torch

    from ncinspect.extraction.text import TextOptions

IDS, MASK = "input_ids", "attention_mask"
ROWS_RULE = (
    "every position with a next token in its window (attention_mask 1 there and at the next "
    "position); label: the next token's id; K: the vocabulary"
)
_BLOCK = 4096  # rows of input_ids read at a time while counting
_DOCS = 256  # documents tokenized per call


@dataclass(frozen=True)
class NextTokenOptions:
    """--context-length (tokens per window; None: text needs it, arrays use their row length)
    and --max-tokens (the first rows kept; None: all)."""

    context_length: int | None = None
    max_tokens: int | None = None


@dataclass
class TokenData:
    """Opened next-token data for `data.open_data` to wrap: `row_counts` (one entry per window
    in order, the rows it gives after --max-tokens; windows with none count 0), what was done
    (`provenance`), `batches(batch_size)` (item i = batch i) and the split the source names."""

    row_counts: np.ndarray
    provenance: dict[str, Any]
    batches: Callable[[int], Any]
    split: tuple[str, str] | None = None

    @property
    def n(self) -> int:
        """The windows."""
        return len(self.row_counts)


def next_labels(ids: np.ndarray, mask: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """int64 (B, C) labels of windows `ids` (B, C) with `mask` (B, C): the next token at each
    row (mask 1 at t and t + 1), at most the first `keep[b]` rows of window b; -1 elsewhere."""
    valid = np.zeros(ids.shape, dtype=bool)
    valid[:, :-1] = (mask[:, :-1] != 0) & (mask[:, 1:] != 0)
    valid &= np.cumsum(valid, axis=1) <= keep[:, None]
    labels = np.full(ids.shape, -1, dtype=np.int64)
    labels[:, :-1] = np.where(valid[:, :-1], ids[:, 1:], -1)
    return labels


def _capped(counts: np.ndarray, max_tokens: int | None) -> np.ndarray:
    """`counts` (rows per window) cut after the window that reaches `max_tokens` rows, whose
    count is lowered to what is left of it."""
    if max_tokens is None:
        return counts
    total = np.cumsum(counts)
    if total.size == 0 or total[-1] <= max_tokens:
        return counts
    last = int(np.searchsorted(total, max_tokens))  # the first window reaching max_tokens
    kept = counts[: last + 1].copy()
    kept[last] -= int(total[last]) - max_tokens
    return kept


def _batch(ids: np.ndarray, mask: np.ndarray, keep: np.ndarray) -> tuple[Any, torch.Tensor]:
    import torch

    labels = next_labels(ids, mask, keep)
    inputs = {IDS: torch.from_numpy(ids), MASK: torch.from_numpy(mask.astype(np.int64))}
    return inputs, torch.from_numpy(labels)


def _common_provenance(
    counts: np.ndarray, options: NextTokenOptions, width: int, source: str, windowing: str
) -> dict[str, Any]:
    return {
        "next_token": ROWS_RULE,
        "context_length": width,
        "context_length_source": source,
        "windowing": windowing,
        "windows": int(np.count_nonzero(counts)),
        "max_tokens": options.max_tokens,
    }


# ---------------------------------------------------------------------------------------------
# Token-id arrays


def _integer(array: LazyArray, name: str, path: Path, bools: bool = False) -> None:
    ok = np.issubdtype(array.dtype, np.integer) or (bools and array.dtype == np.bool_)
    if len(array.shape) != 2 or not ok:
        raise DataError(
            f"--next-token: '{name}' has shape {array.shape} dtype {array.dtype}; expected "
            f"(N, L) {'integers or bools' if bools else 'integer token ids'}; {hint(path)}",
            path=path,
        )


@dataclass
class _Cut:
    """How rows of L tokens become windows of `width` positions: `per_row` windows each, the
    row padded on the right to per_row x width."""

    length: int
    width: int

    @property
    def per_row(self) -> int:
        return -(-self.length // self.width)

    def windows(self, block: np.ndarray, fill: int) -> np.ndarray:
        """(r, L) -> (r * per_row, width), padded with `fill`."""
        extra = self.per_row * self.width - self.length
        if extra:
            block = np.pad(block, ((0, 0), (0, extra)), constant_values=fill)
        return block.reshape(-1, self.width)


def _mask_block(mask: LazyArray | None, r0: int, r1: int, length: int, path: Path) -> np.ndarray:
    """Rows r0:r1 of the attention mask as int64 0/1 (ones without a mask); DataError for
    another value."""
    if mask is None:
        return np.ones((r1 - r0, length), dtype=np.int64)
    block = np.asarray(mask.read(r0, r1)).astype(np.int64)
    bad = (block != 0) & (block != 1)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"--next-token: '{MASK}' holds {int(block[row, col])} at row {r0 + row}, position "
            f"{col}; expected 0 (padding) or 1 (a token)",
            path=path,
        )
    return block


def _array_counts(
    mask: LazyArray | None, n: int, cut: _Cut, max_tokens: int | None, path: Path
) -> np.ndarray:
    """The rows each window gives (after --max-tokens), reading the mask by blocks of rows and
    stopping once --max-tokens rows are counted."""
    parts: list[np.ndarray] = []
    seen = 0
    for r0 in range(0, n, _BLOCK):
        r1 = min(n, r0 + _BLOCK)
        windows = cut.windows(_mask_block(mask, r0, r1, cut.length, path), 0)
        counts = ((windows[:, :-1] != 0) & (windows[:, 1:] != 0)).sum(axis=1)
        parts.append(counts.astype(np.int64))
        seen += int(counts.sum())
        if max_tokens is not None and seen >= max_tokens:
            break
    counts = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return _capped(counts, max_tokens)


class ArrayWindows:
    """Map-style dataset over token-id arrays: item i = windows [i B, (i + 1) B) of `cut`."""

    def __init__(
        self,
        ids: LazyArray,
        mask: LazyArray | None,
        cut: _Cut,
        counts: np.ndarray,
        batch_size: int,
        path: Path,
    ) -> None:
        self.ids, self.mask, self.cut, self.counts = ids, mask, cut, counts
        self.batch_size, self.path = batch_size, path

    def __len__(self) -> int:
        return -(-len(self.counts) // self.batch_size)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        start = i * self.batch_size
        stop = min(len(self.counts), start + self.batch_size)
        if start >= stop:
            raise IndexError(i)
        per = self.cut.per_row
        r0, r1 = start // per, (stop - 1) // per + 1
        ids = self.cut.windows(np.asarray(self.ids.read(r0, r1)).astype(np.int64), 0)
        mask = self.cut.windows(_mask_block(self.mask, r0, r1, self.cut.length, self.path), 0)
        pick = slice(start - r0 * per, stop - r0 * per)
        return _batch(
            np.ascontiguousarray(ids[pick]),
            np.ascontiguousarray(mask[pick]),
            self.counts[start:stop],
        )


def open_token_arrays(path: Path, options: NextTokenOptions) -> TokenData:
    """The `input_ids` (N, L) and optional `attention_mask` (N, L) of an .npz / .h5 file, each
    row cut into windows of --context-length positions (default L)."""
    members = array_members(path)
    if IDS not in members:
        raise DataError(
            f"--next-token: no '{IDS}' array; expected token ids '{IDS}' (N, L) and an optional "
            f"'{MASK}' (N, L); it holds {member_list(members)}; {hint(path)}",
            path=path,
        )
    ids = members[IDS]
    _integer(ids, IDS, path)
    mask = members.get(MASK)
    if mask is not None:
        _integer(mask, MASK, path, bools=True)
        if mask.shape != ids.shape:
            raise DataError(
                f"--next-token: '{MASK}' {mask.shape} and '{IDS}' {ids.shape} differ in shape",
                path=path,
            )
    n, length = ids.shape
    if n == 0 or length < 2:
        raise DataError(
            f"--next-token: '{IDS}' has shape {ids.shape}; expected rows of at least 2 tokens",
            path=path,
        )
    width = length if options.context_length is None else min(options.context_length, length)
    cut = _Cut(length, width)
    counts = _array_counts(mask, n, cut, options.max_tokens, path)
    if not counts.any():
        raise DataError(
            f"--next-token: no position of '{IDS}' has a next token (every row holds fewer "
            "than 2 tokens with attention_mask 1)",
            path=path,
        )
    source = "--context-length" if options.context_length is not None else f"the rows of {IDS}"
    if options.context_length is not None and options.context_length > length:
        source += f" (the rows are {length} tokens)"
    windowing = (
        f"each row of {IDS} cut into consecutive windows of {width} positions (no overlap; "
        f"the last padded on the right), {MASK} {'as stored' if mask is not None else 'all ones'}"
    )
    provenance = {
        "data_keys": [IDS, MASK] if mask is not None else [IDS],
        "data_rows": n,
        **_common_provenance(counts, options, width, source, windowing),
    }

    def batches(batch_size: int) -> ArrayWindows:
        return ArrayWindows(ids, mask, cut, counts, batch_size, path)

    return TokenData(counts, provenance, batches)


# ---------------------------------------------------------------------------------------------
# Text


@dataclass
class _Windows:
    """Documents' tokens concatenated (`flat`), and each window's start and length in it."""

    width: int
    flat: list[np.ndarray] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    size: int = 0
    rows: int = 0
    documents: int = 0

    def add(self, ids: list[int]) -> None:
        """One document's tokens, cut into windows (a window of one token is left out)."""
        self.documents += 1
        for s in range(0, len(ids), self.width):
            length = min(self.width, len(ids) - s)
            if length >= 2:
                self.starts.append(self.size + s)
                self.lengths.append(length)
                self.rows += length - 1
        self.flat.append(np.asarray(ids, dtype=np.int64))
        self.size += len(ids)


class TextWindows:
    """Map-style dataset over tokenized documents: item i = windows [i B, (i + 1) B), each
    (B, C), padded on the right with `pad_id` and attention_mask 0."""

    def __init__(
        self,
        flat: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        counts: np.ndarray,
        width: int,
        pad_id: int,
        batch_size: int,
    ) -> None:
        self.flat, self.starts, self.lengths, self.counts = flat, starts, lengths, counts
        self.width, self.pad_id, self.batch_size = width, pad_id, batch_size

    def __len__(self) -> int:
        return -(-len(self.counts) // self.batch_size)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        start = i * self.batch_size
        stop = min(len(self.counts), start + self.batch_size)
        if start >= stop:
            raise IndexError(i)
        cols = np.arange(self.width)
        mask = cols[None, :] < self.lengths[start:stop, None]
        where = np.minimum(self.starts[start:stop, None] + cols[None, :], len(self.flat) - 1)
        ids = np.where(mask, self.flat[where], self.pad_id).astype(np.int64)
        return _batch(ids, mask.astype(np.int64), self.counts[start:stop])


def _tokenized(tokenizer: Any, texts: list[str], folder: Path) -> Iterator[list[int]]:
    """Each text's token ids (the tokenizer's default special tokens, no truncation; no warning
    about documents longer than model_max_length: they are cut into windows)."""
    for i in range(0, len(texts), _DOCS):
        chunk = texts[i : i + _DOCS]
        try:
            encoded = tokenizer(chunk, add_special_tokens=True, truncation=False, verbose=False)
        except Exception as exc:  # noqa: BLE001 - a tokenizer raises anything on odd input
            raise DataError(
                f"the tokenizer failed on documents {i}:{i + len(chunk)} ({type(exc).__name__}: "
                f"{first_line(str(exc))})",
                path=folder,
            ) from None
        yield from encoded["input_ids"]


def open_token_text(
    path: Path,
    options: NextTokenOptions,
    text: TextOptions,
    tokenizer_dir: Path | None,
    split: str | None,
) -> TokenData:
    """Text data (one text column, --text-key or text / sentence), each document tokenized
    alone by the tokenizer (--tokenizer, else the model's folder) and cut into windows of
    --context-length tokens (required)."""
    from ncinspect.extraction.text import _texts, load_tokenizer, read_table, text_columns

    if options.context_length is None:
        raise UsageError(
            "--next-token with text data needs --context-length N: the tokens per window (at "
            "most the positions the model takes)",
            path=path,
        )
    table = read_table(path, None, split)
    (key,) = text_columns(text.text_keys, table.names, path)
    texts = _texts(table.read([key], table.total)[key], key, path)
    folder = text.tokenizer or tokenizer_dir
    tokenizer = load_tokenizer(folder, text.trust_code)
    assert folder is not None
    windows = _Windows(options.context_length)
    for ids in _tokenized(tokenizer, texts, folder):
        windows.add(list(ids))
        if options.max_tokens is not None and windows.rows >= options.max_tokens:
            break
    if not windows.starts:
        raise DataError(
            f"--next-token: no document of column '{key}' has 2 tokens or more", path=path
        )
    lengths = np.asarray(windows.lengths, dtype=np.int64)
    counts = _capped(lengths - 1, options.max_tokens)
    starts = np.asarray(windows.starts[: len(counts)], dtype=np.int64)
    lengths = lengths[: len(counts)]
    flat = np.concatenate(windows.flat)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad_id = pad if isinstance(pad, int) else 0
    windowing = (
        f"each document tokenized alone (the tokenizer's special tokens, no EOS appended, no "
        f"truncation), cut into consecutive windows of {options.context_length} tokens (no "
        "overlap; the last shorter, padded on the right)"
    )
    provenance = {
        "data_kind": table.kind,
        "data_keys": [key],
        "text_keys": [key],
        "data_rows": table.total,
        "tokenizer": str(folder),
        "tokenizer_source": "--tokenizer" if text.tokenizer else "the model's folder",
        "tokenizer_class": type(tokenizer).__name__,
        **_common_provenance(
            counts, options, options.context_length, "--context-length", windowing
        ),
    }
    width = options.context_length

    def batches(batch_size: int) -> TextWindows:
        return TextWindows(flat, starts, lengths, counts, width, pad_id, batch_size)

    return TokenData(counts, provenance, batches, table.split)
