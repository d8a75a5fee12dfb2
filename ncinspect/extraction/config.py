"""What an extraction is asked and what it answers: `ExtractConfig` in, `ExtractOutcome`s out.

Owns `ExtractConfig` (every option of `ncinspect extract`, checked when built, with the options
--next-token refuses), `ExtractOutcome` (one store written or skipped), the `ProgressHook`
protocol the caller may pass, and the parsers of `KEY=VALUE`, `INPUTS,LABELS` and comma-list
option values (`--input-keys`, `--text-key`). Never touches a file, a model or torch.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ncinspect.errors import UsageError
from ncinspect.extraction.layers import Pooling, parse_layers, parse_pool
from ncinspect.extraction.preprocess import LAYOUTS, Layout, parse_normalize
from ncinspect.extraction.text import TextOptions
from ncinspect.extraction.tokens import NextTokenOptions

Precision = Literal["fp32", "bf16", "fp16"]
TaskChoice = Literal["auto", "classification", "regression"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
TASKS: tuple[str, ...] = ("auto", "classification", "regression")


class ProgressHook(Protocol):
    """Progress callbacks: one start/finish per checkpoint, advance per batch (rows), and a
    warning line when a checkpoint loaded with a caveat."""

    def start(self, label: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...

    def warn(self, message: str) -> None:
        """One warning line about a checkpoint (the keys --no-strict ignored)."""


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `ncinspect extract` needs; see the CLI's help for each field."""

    checkpoints: tuple[Path, ...]
    data: str
    model: str | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)
    head: str | None = None
    split: str | None = None
    out: Path = Path("features")
    batch_size: int = 256
    workers: int = 0
    device: str = "auto"
    precision: Precision = "fp32"
    task: TaskChoice = "auto"
    limit: int | None = None
    overwrite: bool = False
    trust_code: bool = False
    state_key: str | None = None
    data_keys: tuple[str, str] | None = None
    data_args: Mapping[str, Any] = field(default_factory=dict)
    code_paths: tuple[Path, ...] = ()
    run: str | None = None
    with_outputs: bool = True
    stats_only: bool = False
    drop_nonfinite: bool = False
    strict: bool = True  # False (--no-strict): unexpected checkpoint keys are ignored
    normalize: str | None = None  # --normalize PRESET|MEAN:STD (see extraction.preprocess)
    layout: Layout | None = None  # --layout nhwc|nchw: overrides the image layout rule
    input_keys: tuple[str, ...] | None = None  # --input-keys: arrays -> keyword inputs
    text_keys: tuple[str, ...] = ()  # --text-key: text data's column(s); () = text / sentence
    label_key: str | None = None  # --label-key: text data's labels; None = label/labels/target
    max_length: int | None = None  # --max-length: tokens per row; None = the tokenizer's (<= 512)
    tokenizer: Path | None = None  # --tokenizer DIR (save_pretrained); None = the model's folder
    layers: tuple[str, ...] | None = None  # --layers: module names and shortcuts (`layers`)
    pool: str | None = None  # --pool: how 4-D and 3-D layer outputs become rows (`layers`)
    # --next-token: a language model's every position with a next token is a row (`tokens`,
    # `nexttoken`); batch_size then counts windows
    next_token: bool = False
    context_length: int | None = None  # --context-length: tokens per window
    max_tokens: int | None = None  # --max-tokens: the first rows (positions) kept
    min_count: int = 1  # --min-count (--stats-only): statistics of the classes with >= M rows

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise UsageError("give at least one checkpoint file or directory")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be >= 1, got {self.limit}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.task not in TASKS:
            raise UsageError(f"--task must be one of {', '.join(TASKS)}")
        if self.data_keys is not None and len(self.data_keys) != 2:
            raise UsageError("--data-keys takes two names: INPUTS,LABELS")
        self._check_inputs()
        self._check_next_token()
        if self.layers is not None:
            parse_layers(",".join(self.layers))
        parse_pool(self.pool)  # a bad --pool fails here, before any work
        if self.normalize is not None:
            parse_normalize(self.normalize)  # a bad value fails here, before any work
        if self.layout is not None and self.layout not in LAYOUTS:
            raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.min_count < 1:
            raise UsageError(f"--min-count must be >= 1, got {self.min_count}")
        if self.min_count > 1 and not self.stats_only:
            raise UsageError(
                "--min-count belongs to --stats-only (a feature store keeps every row; pass "
                "--min-count to report instead)"
            )
        if self.drop_nonfinite and not self.stats_only:
            raise UsageError(
                "--drop-nonfinite belongs to --stats-only (a feature store keeps every row; "
                "pass --drop-nonfinite to report instead)"
            )

    def _check_inputs(self) -> None:
        """--input-keys with --data-keys ,LABELS; the text options' values."""
        keys = self.input_keys
        if keys is not None:
            _names(keys, "--input-keys")
            if self.data_keys is not None and self.data_keys[0]:
                raise UsageError(
                    f"--data-keys {','.join(self.data_keys)} and --input-keys both name the "
                    f"inputs; pass --data-keys ,{self.data_keys[1]} (the labels only) with "
                    "--input-keys"
                )
        elif self.data_keys is not None and not self.data_keys[0]:
            raise UsageError("--data-keys ,LABELS (no inputs) goes with --input-keys")
        if self.text_keys:
            _names(self.text_keys, "--text-key")
            if len(self.text_keys) > 2:
                raise UsageError(
                    "--text-key takes one column, or two for sentence pairs; got "
                    f"{', '.join(self.text_keys)}"
                )
        if self.label_key is not None and not self.label_key:
            raise UsageError("--label-key: expected a column name")
        if self.max_length is not None and self.max_length < 1:
            raise UsageError(f"--max-length must be >= 1, got {self.max_length}")

    def _check_next_token(self) -> None:
        """--context-length and --max-tokens belong to --next-token, which refuses the options
        that choose other inputs, labels, heads or rows."""
        if not self.next_token:
            for option, value in (
                ("--context-length", self.context_length),
                ("--max-tokens", self.max_tokens),
            ):
                if value is not None:
                    raise UsageError(f"{option} belongs to --next-token (language models)")
            return
        if self.context_length is not None and self.context_length < 2:
            raise UsageError(
                f"--context-length must be >= 2 (a window of one token has no next token), got "
                f"{self.context_length}"
            )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UsageError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        refused = [
            (self.limit is not None, "--limit", "rows are positions: --max-tokens caps them"),
            (self.head is not None, "--head", "the head is the output embedding"),
            (self.task == "regression", "--task regression", "the labels are token ids"),
            (self.layers is not None, "--layers", "not supported with --next-token yet"),
            (
                self.input_keys is not None or self.data_keys is not None,
                "--input-keys" if self.input_keys is not None else "--data-keys",
                "token-id arrays are read by name: input_ids and an optional attention_mask",
            ),
            (self.label_key is not None, "--label-key", "the labels are the next tokens"),
            (
                self.max_length is not None,
                "--max-length",
                "--context-length cuts the documents into windows",
            ),
            (len(self.text_keys) > 1, "two --text-key columns", "a document is one column"),
        ]
        for given, option, why in refused:
            if given:
                raise UsageError(f"{option} does not apply with --next-token ({why})")

    def next_token_options(self) -> NextTokenOptions | None:
        """--next-token's data options (--context-length, --max-tokens), None without it."""
        if not self.next_token:
            return None
        return NextTokenOptions(context_length=self.context_length, max_tokens=self.max_tokens)

    @property
    def pooling(self) -> Pooling:
        """--pool as parsed (`layers.parse_pool`)."""
        return parse_pool(self.pool)

    def text_options(self) -> TextOptions:
        """The text data options (--text-key, --label-key, --max-length, --tokenizer)."""
        return TextOptions(
            text_keys=self.text_keys,
            label_key=self.label_key,
            max_length=self.max_length,
            tokenizer=self.tokenizer,
            trust_code=self.trust_code,
        )


@dataclass(frozen=True)
class ExtractOutcome:
    """One checkpoint's result: the store written (or found complete and skipped)."""

    checkpoint: Path
    store: Path
    status: Literal["written", "skipped"]
    n: int
    seconds: float
    run: str
    shards: int = 1  # P > 1: `store` is this process's shard, `n` the rows of the whole set
    rank: int = 0
    layers_written: int = 0  # --layers: layer stores written (the rest existed)
    layers_folder: Path | None = None  # --layers: where the layer stores are

    @property
    def name(self) -> str:
        """The store, or for a shard set its name pattern NAME.shard-*-of-PPPPP.h5."""
        if self.shards == 1:
            return str(self.store)
        return str(self.store).replace(f".shard-{self.rank:05d}-", ".shard-*-")


def parse_assignments(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    """`KEY=VALUE` items -> dict; values parsed with ast.literal_eval, else kept as strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"{option}: expected KEY=VALUE with KEY a Python name, got {item!r}")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[key] = text
    return out


def parse_data_keys(text: str | None) -> tuple[str, str] | None:
    """`X,Y` -> ("X", "Y"); `,Y` (labels only, beside --input-keys) -> ("", "Y")."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not parts[1]:
        raise UsageError(
            f"--data-keys: expected two names INPUTS,LABELS (or ,LABELS with --input-keys), "
            f"got {text!r}"
        )
    return parts[0], parts[1]


def parse_names(items: str | Sequence[str] | None, option: str) -> tuple[str, ...] | None:
    """Comma lists, given once or repeated (`a,b` or `a` `b`) -> ("a", "b"); None when absent."""
    if items is None:
        return None
    texts = [items] if isinstance(items, str) else list(items)
    if not texts:
        return None
    return _names(tuple(p.strip() for t in texts for p in t.split(",")), option)


def _names(names: tuple[str, ...], option: str) -> tuple[str, ...]:
    """`names` when none is empty or repeated; UsageError otherwise."""
    if not names or not all(names):
        raise UsageError(f"{option}: expected comma-separated names, got {','.join(names)!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"{option}: {', '.join(repeated)} given twice")
    return names
