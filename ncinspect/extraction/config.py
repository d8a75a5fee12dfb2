"""What an extraction is asked and what it answers: `ExtractConfig` in, `ExtractOutcome`s out.

Owns `ExtractConfig` (every option of `ncinspect extract`, checked when built), `ExtractOutcome`
(one store written or skipped), the `ProgressHook` protocol the caller may pass, and the parsers
of `KEY=VALUE` and `INPUTS,LABELS` option values. Never touches a file, a model or torch.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ncinspect.errors import UsageError
from ncinspect.extraction.preprocess import LAYOUTS, Layout, parse_normalize

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
        if self.normalize is not None:
            parse_normalize(self.normalize)  # a bad value fails here, before any work
        if self.layout is not None and self.layout not in LAYOUTS:
            raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.drop_nonfinite and not self.stats_only:
            raise UsageError(
                "--drop-nonfinite belongs to --stats-only (a feature store keeps every row; "
                "pass --drop-nonfinite to report instead)"
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
    """`X,Y` -> ("X", "Y")."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise UsageError(f"--data-keys: expected two names INPUTS,LABELS, got {text!r}")
    return parts[0], parts[1]
