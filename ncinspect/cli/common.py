"""What every command shares: option types and parsers, the error guard, the output writer.

Owns: the choice Enums, `PathsArg`, the parsers of the options several commands take
(`--metrics`, `RUN=TEXT` labels, `A,B` number pairs), `guarded` (every `NcInspectError` becomes
one line on stderr and its exit code: 1 bad input, 2 bad usage; 130 interrupted, 143 terminated)
and `write_output` (stdout, or a file written atomically).
Never imports torch, h5py or rich at import time, does math, or reads a feature file.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from ncinspect.errors import (
    NcInspectError,
    OutputError,
    Terminated,
    UsageError,
    check_interrupt,
    pending_interrupt,
    visible,
)

T = TypeVar("T")


class By(str, Enum):
    """`report --by`: a row per store, a row per run, each run's checkpoints, `auto` (a row
    per run plus its first-to-final change when a run has several checkpoints and the output is
    a table; a row per store otherwise), or `layer` (the layer stores of `extract --layers`: a
    table per checkpoint, a row per layer in model order, and the law of data separation)."""

    auto = "auto"
    checkpoint = "checkpoint"
    run = "run"
    epoch = "epoch"
    layer = "layer"


class Checkpoints(str, Enum):
    """`report --by layer --checkpoints`: each run's final checkpoint (per split), or all."""

    final = "final"
    all = "all"


# The metric two runs are matched at when --at is not given: each task's first collapse measure.
DEFAULT_AT: dict[str, str] = {"classification": "nc1", "regression": "nrc1"}

ManifestOpt = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        help="A YAML or JSON file stating hyper-parameters per run (runs: {RUN: {loss, "
        "label_smoothing, weight_decay, train_size, train_per_class, loss_reduction, "
        "optimizer, label}}); it wins over "
        "the checkpoints' provenance and the configs beside the stores.",
    ),
]


def parse_dump_keys(text: str | None) -> dict[str, str] | None:
    """`--keys features=feats,labels=y,...` as {role: array name}; None when not given."""
    if text is None:
        return None
    from ncinspect.io.dumps import parse_keys

    return parse_keys(text)


KeysOpt = Annotated[
    str | None,
    typer.Option(
        "--keys",
        help="Dumps: which array holds what, e.g. features=feats,labels=y,weight=W (roles: "
        "features, labels, targets, weight, bias, outputs, epoch).",
    ),
]


SplitOpt = Annotated[
    str | None,
    typer.Option(
        "--split",
        help="Only the stores of these splits (comma-separated, e.g. train or train,val); "
        "default: every split found. Stores without a split name are left out when given.",
    ),
]


def parse_splits(text: str | None) -> list[str] | None:
    """`--split train,val` -> ["train", "val"]; an empty list is a usage error."""
    if text is None:
        return None
    names = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not names:
        raise UsageError(f"--split: expected split names, e.g. train or train,test; got {text!r}")
    return names


class TemperatureMethod(str, Enum):
    """`--temperature`: how the calibration temperature is fitted."""

    nll = "nll"
    grid_ece = "grid-ece"


class GlobalMean(str, Enum):
    """`--global-mean`: the sample mean, or the plain mean of the class means."""

    weighted = "weighted"
    unweighted = "unweighted"


class TargetCov(str, Enum):
    """`--target-cov`: the target covariance NRC3 compares W W^T with."""

    centred = "centred"
    uncentred = "uncentred"


class UfmReduction(str, Enum):
    """`--ufm-reduction`: how a regression run's training loss reduced the squared errors."""

    mean = "mean"
    sum_targets = "sum_targets"
    half_sum = "half_sum"


class GroupBy(str, Enum):
    """`--group-by`: each run on its own, or runs that differ only by seed together."""

    run = "run"
    label = "label"


class Format(str, Enum):
    """`--format` of report and compare."""

    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


class Precision(str, Enum):
    """`extract --precision`: the autocast dtype of the forward pass."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class TaskChoice(str, Enum):
    """`extract --task`."""

    auto = "auto"
    classification = "classification"
    regression = "regression"


class InspectFormat(str, Enum):
    """`inspect --format`."""

    text = "text"
    json = "json"


class UfmFormat(str, Enum):
    """`ufm classify|regress --format`."""

    table = "table"
    json = "json"


PathsArg = Annotated[
    list[Path],
    typer.Argument(
        help="Feature stores (.h5), dumps (.npz/.pt/.safetensors) or directories (searched "
        "recursively).",
        show_default=False,
    ),
]


def fail(message: str, code: int, path: str | None = None) -> typer.Exit:
    # One line, always: a library's multi-line message is joined rather than spilled, and control
    # characters (a file name's ESC, CR or newline) are shown as escapes, never sent raw.
    message = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    where = "" if path is None else f"{visible(path)}: "
    print(f"ncinspect: error: {where}{visible(message)}", file=sys.stderr)
    return typer.Exit(code)


@contextmanager
def quiet_libraries() -> Iterator[list[warnings.WarningMessage]]:
    """Within the block, what libraries print on their own is recorded, not shown: Python
    warnings (torch's and numpy's, raised while an untrusted file is loaded or analysed) and
    log records (torch logs tracebacks while it loads some files). ncinspect itself reports only
    through its errors and its own lines, never through warnings or logging."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")  # each warning once per place: the list stays small
            yield caught
    finally:
        logging.disable(previous)


def guarded(fn: Callable[[], T]) -> T:
    """Run a command body; user errors become one stderr line and an exit code, never a trace.
    Library warnings and log records are kept off stderr (`quiet_libraries`)."""
    try:
        with quiet_libraries():
            result = fn()
        check_interrupt()  # one that Python dropped while the work went on to the end
        return result
    except Exception as exc:
        # After a Ctrl-C or SIGTERM, an error is its consequence (library code stopped half-way,
        # e.g. `threading.Condition.wait` then releases a lock it no longer holds): the interrupt
        # is what is reported.
        stop = pending_interrupt()
        if isinstance(stop, Terminated):
            raise fail("terminated (SIGTERM)", 143) from None
        if stop is not None:
            raise fail("interrupted", 130) from None
        if isinstance(exc, NcInspectError):
            raise fail(exc.message, exc.exit_code, exc.path) from None
        raise
    except Terminated:
        raise fail("terminated (SIGTERM)", 143) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None


def parse_metrics(text: str | None) -> list[str] | None:
    """`--metrics nc1,nc3` -> keys (validated against the catalogue); `all` -> every key."""
    from ncinspect.metrics.keys import METRICS

    if text is None:
        return None
    if text.strip() == "all":
        return list(METRICS)
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in METRICS]
    if unknown:
        raise UsageError(
            f"--metrics: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(METRICS)}"
        )
    return keys


def parse_pair(text: str | None, option: str) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        a, b = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"{option}: expected two numbers like 0.01,0.001, got {text!r}") from None
    if a < 0 or b < 0:
        raise UsageError(f"{option}: expected non-negative values, got {text!r}")
    return a, b


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """`--label RUN=TEXT` (repeatable) -> {RUN: TEXT}."""
    out: dict[str, str] = {}
    for item in items or []:
        run, sep, text = item.partition("=")
        if not sep or not run:
            raise UsageError(f"--label: expected RUN=TEXT, got {item!r}")
        out[run] = text
    return out


def write_output(text: str, output: Path | None) -> None:
    """Print to stdout, or write the file atomically (a new temporary file, then a rename that
    replaces a symbolic link at `output` instead of writing through it)."""
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    if output.is_dir():
        raise OutputError("output path is a directory, expected a file name", path=output)
    from ncinspect.io.atomic import AtomicFile

    # A new private file (nothing planted at a guessed name is followed or truncated), renamed
    # over `output`: a symbolic link there is replaced, its target never written.
    try:
        with AtomicFile(output) as tmp:
            assert tmp.fd is not None
            with open(tmp.fd, "w", encoding="utf-8", closefd=False) as fh:
                fh.write(text if text.endswith("\n") else text + "\n")
            tmp.commit()
    except OSError as exc:
        raise OutputError(f"cannot write: {exc.strerror}", path=output) from None
