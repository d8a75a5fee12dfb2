"""`ncinspect extract`: penultimate features of checkpoints into HDF5 feature stores.

Owns: the extract command's options (turned into one `ExtractConfig`), the progress shown on
stderr (a rich.progress bar with an ETA on a terminal, one summary line per checkpoint always,
and `warning:` lines) and the one-line outcome per store on stdout. Never loads a checkpoint or
runs a model itself (`ncinspect.extraction.run` does); torch and rich are imported only when the
command runs.
"""

from __future__ import annotations

import sys
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ncinspect.cli.common import Precision, TaskChoice, guarded
from ncinspect.errors import UsageError, visible

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

app = typer.Typer()
DEFAULT_BATCH = 256  # rows per batch
NEXT_TOKEN_BATCH = 8  # windows per batch with --next-token (each window is up to C rows)


class Layout(str, Enum):
    """--layout: where an image array keeps its channels."""

    nhwc = "nhwc"
    nchw = "nchw"


class StderrProgress:
    """Progress per checkpoint on stderr (implements `extraction.config.ProgressHook`), and
    its warning lines (`warning: MESSAGE`).

    On a terminal: a live rich.progress bar (rows done of the total, elapsed time, ETA), removed
    when the checkpoint ends. Always: one line per checkpoint, `LABEL: ROWS rows in S s`, which
    is all that reaches stderr when it is not a terminal (a log file, a pipe).
    """

    def __init__(self) -> None:
        self.label = ""
        self.done = 0
        self.t0 = 0.0
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def start(self, label: str, total: int | None) -> None:
        # the label names a run and a checkpoint file: shown with visible control characters,
        # never read as rich markup
        self.label, self.done, self.t0 = visible(label), 0, time.perf_counter()
        if not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr, markup=False, emoji=False, highlight=False),
            transient=True,
        )
        self._task = self._bar.add_task(self.label, total=total)
        self._bar.start()

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)

    def finish(self) -> None:
        seconds = time.perf_counter() - self.t0
        if self._bar is not None:
            self._bar.stop()
            self._bar, self._task = None, None
        if self.done:  # a checkpoint that stopped before its first batch: its error says why
            print(f"{self.label}: {self.done} rows in {seconds:.1f} s", file=sys.stderr)

    def warn(self, message: str) -> None:
        print(f"warning: {visible(message)}", file=sys.stderr)


@app.command()
def extract(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            help="Checkpoint files or run directories (every checkpoint in a directory, in "
            "epoch order; each directory is a run), transformers model directories, or Trainer "
            "output folders (their checkpoint-N/ in step order). Formats are detected from "
            "content.",
            exists=True,
            show_default=False,
        ),
    ],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="An .npz or .h5 file (inputs x/inputs/data/images, labels or targets "
            "y/labels/targets), text data (.jsonl, .json, .csv, .tsv, .parquet, or a datasets "
            "save_to_disk folder), a CIFAR-10/100 python batch folder, or module:factory / "
            "file.py:factory returning a torch Dataset of (input, label_or_target).",
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="package.module:factory or path/to/file.py:factory building the nn.Module. "
            "Default: 'model'/'model_args' in a run.json, config.json or args.json beside the "
            "checkpoint. Optional for torch.export programs.",
        ),
    ] = None,
    model_arg: Annotated[
        list[str] | None,
        typer.Option("--model-arg", help="KEY=VALUE for the model factory (repeatable)."),
    ] = None,
    head: Annotated[
        str | None,
        typer.Option(help="Module name of the head (default: the last matching nn.Linear)."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Split name (default: from the data file's name, a CIFAR folder's train "
            "batches, a factory's split default; required for a factory that cannot say)."
        ),
    ] = None,
    normalize: Annotated[
        str | None,
        typer.Option(
            "--normalize",
            help="Input normalization the model was trained with: cifar10, cifar100, imagenet, "
            "mnist, none, or MEAN:STD comma lists (0.5,0.5,0.5:0.25,0.25,0.25) in [0, 1] units. "
            "Required for raw uint8 images unless the run's config has 'normalize'.",
            show_default=False,
        ),
    ] = None,
    layout: Annotated[
        Layout | None,
        typer.Option(
            "--layout",
            help="Where image arrays keep their channels (default: channel-last when the last "
            "axis is 1, 3 or 4 and axis 1 is not).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Output: OUT/<run>/<checkpoint file name>.<split>.h5.")
    ] = Path("features"),
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            help="Rows per batch (default 256); with --next-token, windows per batch (default 8).",
            min=1,
            show_default=False,
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.", min=0)] = 0,
    device: Annotated[
        str, typer.Option(help="auto (cuda > mps > cpu), cpu, cuda, cuda:I or mps.")
    ] = "auto",
    precision: Annotated[
        Precision, typer.Option(help="Autocast precision; features are stored float32.")
    ] = Precision.fp32,
    task: Annotated[
        TaskChoice,
        typer.Option(help="auto: integer labels -> classification, float targets -> regression."),
    ] = TaskChoice.auto,
    limit: Annotated[int | None, typer.Option(help="Use the first N rows only.", min=1)] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing stores (default: skip them).")
    ] = False,
    trust_code: Annotated[
        bool,
        typer.Option(
            "--trust-code",
            "--unsafe-pickle",
            help="Run code that a file holds or names: whole pickles, TorchScript, exported "
            "programs off the operator allowlist, model factories named by a config or a "
            "checkpoint, a tokenizer's auto_map code. RUNS CODE FROM THE FILE. --unsafe-pickle "
            "is an alias.",
        ),
    ] = False,
    state_key: Annotated[
        str | None, typer.Option("--state-key", help="Wrapper-dict entry holding the weights.")
    ] = None,
    data_keys: Annotated[
        str | None,
        typer.Option(
            "--data-keys",
            help="INPUTS,LABELS: array names in the data (,LABELS with --input-keys).",
        ),
    ] = None,
    input_keys: Annotated[
        str | None,
        typer.Option(
            "--input-keys",
            help="K1,K2,...: .npz/.h5 arrays passed to the model as keyword arguments "
            "(input_ids,attention_mask,token_type_ids); integers and bools as int64.",
            show_default=False,
        ),
    ] = None,
    text_key: Annotated[
        list[str] | None,
        typer.Option(
            "--text-key",
            help="Text data: the text column, or two for sentence pairs (repeatable or A,B). "
            "Default: text, else sentence.",
            show_default=False,
        ),
    ] = None,
    label_key: Annotated[
        str | None,
        typer.Option(
            "--label-key",
            help="Text data: the label column (default: label, labels, target); integers are "
            "classes, floats or lists of floats regression targets.",
            show_default=False,
        ),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(
            "--max-length",
            help="Text data: tokens per row after truncation (default: the tokenizer's "
            "model_max_length, at most 512); each batch is padded to its longest row.",
            min=1,
            show_default=False,
        ),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer",
            help="Text data: a tokenizer folder written by save_pretrained (local files only; "
            "its own code runs only with --trust-code). Default: each checkpoint's own model "
            "folder.",
            show_default=False,
        ),
    ] = None,
    data_arg: Annotated[
        list[str] | None,
        typer.Option("--data-arg", help="KEY=VALUE for a data factory (repeatable)."),
    ] = None,
    code_path: Annotated[
        list[Path] | None,
        typer.Option(
            "--code-path",
            help="Directory to make importable for --model and --data specs and for the classes "
            "of a whole pickle (repeatable). Trusts nothing a file names: see --trust-code.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    run: Annotated[
        str | None, typer.Option(help="Run name (default: the checkpoint's directory name).")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress or warnings on stderr.")
    ] = False,
    no_strict: Annotated[
        bool,
        typer.Option(
            "--no-strict",
            help="Ignore checkpoint tensors the model has no place for (listed in a warning and "
            "the store's provenance); every model parameter and buffer must still be loaded.",
        ),
    ] = False,
    stats_only: Annotated[
        bool,
        typer.Option(
            "--stats-only",
            help="Keep only the sufficient statistics and the head, not the N x D features "
            "(two forward passes; report reads the store like any other).",
        ),
    ] = False,
    drop_nonfinite: Annotated[
        bool,
        typer.Option(
            "--drop-nonfinite",
            help="With --stats-only: leave feature rows with NaN/Inf out of the statistics.",
        ),
    ] = False,
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers",
            help="Also store the outputs of these modules, from the same forward pass, one "
            "store each in CHECKPOINT.SPLIT.layers/ (report --by layer): comma-separated module "
            "names and shortcuts blocks:NAME (every child of that Sequential/ModuleList), linear "
            "(every nn.Linear but the head), type:CLASS (every module of that class). The head's "
            "input is always added as the last layer.",
            show_default=False,
        ),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            help="With --layers: how a layer's output becomes one row per sample. 4-D (B, C, H, "
            "W): avg (global average pooling, the default), max or flatten; 3-D, read as (B, L, "
            "D) tokens: cls (the first token) or mean (over the tokens; the real ones when the "
            "inputs have an attention_mask). Both kinds at once: e.g. avg,cls.",
            show_default=False,
        ),
    ] = None,
    next_token: Annotated[
        bool,
        typer.Option(
            "--next-token",
            help="Language models (...ForCausalLM, ...LMHeadModel): every position with a next "
            "token is a row; features: the output embedding's input; label: the next token; K: "
            "the vocabulary. Data: input_ids (N, L) and an optional attention_mask in an "
            ".npz/.h5 file, or text data cut into --context-length windows. No logits are "
            "stored; --stats-only suits large data.",
        ),
    ] = False,
    context_length: Annotated[
        int | None,
        typer.Option(
            "--context-length",
            help="With --next-token: tokens per window, consecutive and without overlap. Text: "
            "each document is tokenized alone and cut into windows of N tokens (required). "
            "Token-id arrays: each row is cut into windows of N positions (default: the whole "
            "row).",
            min=2,
            show_default=False,
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            help="With --next-token: keep the first N rows (positions) in data order; the "
            "windows after the one that reaches N are not run.",
            min=1,
            show_default=False,
        ),
    ] = None,
    min_count: Annotated[
        int,
        typer.Option(
            "--min-count",
            help="With --stats-only (classification): gather the statistics of the rows of "
            "the classes with at least N rows only (pass 1 counts every row); recorded in the "
            "store and applied by report (info.min_count).",
            min=1,
        ),
    ] = 1,
    list_layers: Annotated[
        bool,
        typer.Option(
            "--list-layers",
            help="Run the first batch of the first checkpoint and list every module that ran: "
            "its output shape, its features per sample under --pool, and which is the head and "
            "the head's input; writes nothing.",
        ),
    ] = False,
) -> None:
    """Extract penultimate features (the head's input) of checkpoints into HDF5 feature stores.

    Under torchrun (torchrun --nproc-per-node P -m ncinspect extract ...) each process takes
    its share of the data and writes NAME.shard-RRRRR-of-PPPPP.h5; report reads the set as one.
    """

    def body() -> None:
        from ncinspect.extraction.config import (
            ExtractConfig,
            parse_assignments,
            parse_data_keys,
            parse_names,
        )
        from ncinspect.extraction.layers import parse_layers
        from ncinspect.extraction.run import run_extract

        if list_layers and next_token:
            raise UsageError("--list-layers does not apply with --next-token")
        if pool is not None and layers is None and not list_layers:
            raise UsageError(
                "--pool belongs to --layers or --list-layers (the head's input is always (B, D))"
            )
        config = ExtractConfig(
            checkpoints=tuple(checkpoints),
            data=data,
            model=model,
            model_args=parse_assignments(model_arg, "--model-arg"),
            head=head,
            split=split,
            out=out,
            batch_size=batch_size or (NEXT_TOKEN_BATCH if next_token else DEFAULT_BATCH),
            workers=workers,
            device=device,
            precision=precision.value,
            task=task.value,
            limit=limit,
            overwrite=overwrite,
            trust_code=trust_code,
            state_key=state_key,
            data_keys=parse_data_keys(data_keys),
            data_args=parse_assignments(data_arg, "--data-arg"),
            code_paths=tuple(code_path or ()),
            run=run,
            stats_only=stats_only,
            drop_nonfinite=drop_nonfinite,
            min_count=min_count,
            strict=not no_strict,
            normalize=normalize,
            layout=None if layout is None else layout.value,
            input_keys=parse_names(input_keys, "--input-keys"),
            text_keys=parse_names(text_key, "--text-key") or (),
            label_key=label_key,
            max_length=max_length,
            tokenizer=tokenizer,
            layers=None if layers is None else parse_layers(layers),
            pool=pool,
            next_token=next_token,
            context_length=context_length,
            max_tokens=max_tokens,
        )
        if list_layers:
            from ncinspect.extraction.run import list_model_layers
            from ncinspect.render.describe import format_layer_listing

            print(format_layer_listing(list_model_layers(config)))
            return
        outcomes = run_extract(config, None if quiet else StderrProgress())
        for o in outcomes:
            if o.rank != 0:
                continue  # process 0 speaks for a distributed job
            if o.status == "skipped":
                note = "skipped (exists; --overwrite replaces it)"
            else:
                note = f"{o.n} rows in {o.seconds:.1f} s"
            if o.shards > 1:
                note += f" ({o.shards} shards)"
            if o.layers_folder is not None:
                folder = visible(str(o.layers_folder))
                if o.layers_written:
                    count = o.layers_written
                    note += f"; {count} layer store{'s' if count > 1 else ''} written in {folder}"
                else:
                    note += f"; its layer stores exist in {folder}"
            print(f"{visible(o.name)}  {note}")

    guarded(body)
