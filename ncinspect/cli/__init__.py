"""The command line: parse, build a config, call one library function, render. Nothing else.

Owns: Typer commands and options, exit codes (0 ok, 1 bad input, 2 bad usage, 130 interrupted,
143 terminated), and turning every `NcInspectError` into one line on stderr. Never does math or
file formats.
Heavy modules (torch, h5py, rich tables) are imported inside commands so `--help` stays instant.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ncinspect._version import __version__
from ncinspect.errors import (
    NcInspectError,
    OutputError,
    Terminated,
    UsageError,
    check_interrupt,
    interrupt,
)

app = typer.Typer(
    name="ncinspect",
    help="Neural-collapse diagnostics for saved checkpoints and feature stores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")


class By(str, Enum):
    checkpoint = "checkpoint"
    run = "run"
    epoch = "epoch"


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


def fail(message: str, code: int) -> typer.Exit:
    # One line, always: a library's multi-line message is joined rather than spilled.
    message = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"ncinspect: error: {message}", file=sys.stderr)
    return typer.Exit(code)


def guarded(fn: Callable[[], T]) -> T:
    """Run a command body; user errors become one stderr line and an exit code, never a trace."""
    try:
        result = fn()
        check_interrupt()  # one that Python dropped while the work went on to the end
        return result
    except NcInspectError as exc:
        raise fail(str(exc), exc.exit_code) from None
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
    """Print to stdout, or write the file atomically (temporary name, then rename)."""
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    if output.is_dir():
        raise OutputError("output path is a directory, expected a file name", path=output)
    tmp = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        tmp.write_text(text if text.endswith("\n") else text + "\n")
        os.replace(tmp, output)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. the parent is a regular file: nothing was created
            pass
        raise OutputError(f"cannot write: {exc.strerror}", path=output) from None


PathsArg = Annotated[
    list[Path],
    typer.Argument(
        help="Feature stores (.h5), dumps (.npz/.pt/.safetensors) or directories (searched "
        "recursively).",
        show_default=False,
    ),
]


@app.command()
def report(
    paths: PathsArg,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            "-m",
            help="Comma-separated metric keys to show, or 'all'. Default: every key in json/csv, "
            "the main ones in tables.",
        ),
    ] = None,
    gamma: Annotated[
        float | None,
        typer.Option(help="Regression: fix the NRC3 gamma instead of searching it.", min=0.0),
    ] = None,
    ufm_lambdas: Annotated[
        str | None,
        typer.Option(
            "--ufm-lambdas",
            help="LAMBDA_H,LAMBDA_W of the unconstrained feature model: the distance-to-the-UFM-"
            "optimum block uses them (default: lambda_W = lambda_H = the provenance's "
            "weight_decay); regression: NRC3 also uses gamma = LAMBDA_H * LAMBDA_W.",
        ),
    ] = None,
    ufm_alpha: Annotated[
        float | None,
        typer.Option(
            "--alpha",
            help="Classification: label smoothing for the UFM block (default: the provenance's "
            "label_smoothing, else 0).",
        ),
    ] = None,
    ufm_n: Annotated[
        float | None,
        typer.Option(
            "--ufm-n",
            help="Classification: training samples per class n for the UFM block (default: the "
            "provenance's training-set size / K, else N/K of the analysed store).",
        ),
    ] = None,
    no_ufm: Annotated[
        bool, typer.Option("--no-ufm", help="Leave out the distance-to-the-UFM-optimum block.")
    ] = False,
    drop_nonfinite: Annotated[
        bool,
        typer.Option(
            "--drop-nonfinite", help="Compute from the finite rows when features hold NaN/Inf."
        ),
    ] = False,
    chunk_rows: Annotated[
        int | None,
        typer.Option(help="Rows read per chunk (default: sized to the store's chunks).", min=1),
    ] = None,
    no_saved_sums: Annotated[
        bool,
        typer.Option(
            "--no-saved-sums",
            help="Compute the class sums from the features (two passes) even where the store "
            "saved them.",
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file (atomically) instead of stdout."),
    ] = None,
    width: Annotated[
        int | None, typer.Option(help="Table width in characters (default: the terminal's).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print warnings.")] = False,
    by: Annotated[
        By,
        typer.Option(
            "--by",
            help="checkpoint: a row per store; run: a row per run at its final checkpoint; "
            "epoch: each run's metrics across its checkpoints.",
        ),
    ] = By.checkpoint,
    trajectory: Annotated[
        bool, typer.Option("--trajectory", help="Same as --by epoch.", show_default=False)
    ] = False,
    baseline: Annotated[
        str | None,
        typer.Option(help="With --by run: add each run's ratio to this run's final values."),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(help="RUN=TEXT: a label for a run's legend and table (repeatable)."),
    ] = None,
) -> None:
    """Compute the collapse metrics of stores and dumps and print them."""

    def body() -> None:
        from ncinspect.api import analyze
        from ncinspect.render import tables as rep
        from ncinspect.ufm import UfmSettings

        if gamma is not None and ufm_lambdas is not None:
            raise UsageError("--gamma and --ufm-lambdas are alternatives; give one")
        selected = parse_metrics(metrics)
        skipped: list[str] = []
        lambdas = parse_pair(ufm_lambdas, "--ufm-lambdas")
        settings = UfmSettings(lambdas=lambdas, alpha=ufm_alpha, n=ufm_n, enabled=not no_ufm)
        results = analyze(
            paths,
            chunk_rows=chunk_rows,
            drop_nonfinite=drop_nonfinite,
            gamma=gamma,
            ufm_lambdas=lambdas,
            skipped=skipped,
            ufm=settings,
            saved_sums=not no_saved_sums,
        )
        if not quiet:
            for line in skipped + rep.warning_lines(results):
                print(line, file=sys.stderr)
        if not results:
            raise NcInspectError("no feature store or dump found in " + ", ".join(map(str, paths)))
        view = By.epoch if trajectory else by
        if baseline is not None and view is not By.run:
            raise UsageError("--baseline needs --by run")
        if view is not By.checkpoint:
            _render_runs(
                results, view, selected, baseline, parse_labels(label), format, output, width
            )
            return
        if format is Format.table and output is None:
            rep.print_tables(results, selected, width=width)
            return
        render: dict[Format, Callable[..., str]] = {
            Format.json: rep.to_json,
            Format.csv: rep.to_csv,
            Format.markdown: rep.to_markdown,
            Format.table: lambda res, sel: rep.table_text(res, sel, width or 160),
        }
        write_output(render[format](results, selected), output)

    guarded(body)


def _render_runs(
    results: list[Any],
    view: By,
    selected: list[str] | None,
    baseline: str | None,
    labels: dict[str, str],
    format: Format,
    output: Path | None,
    width: int | None,
) -> None:
    import json

    from ncinspect.metrics.keys import TABLE_DEFAULT, keys_for
    from ncinspect.render import tables as rep
    from ncinspect.runs import group_runs, runs_json, runs_table

    runs = group_runs(results, labels)
    tasks = {run.task for run in runs}

    def keys(task: str, table: bool) -> list[str]:
        every = keys_for(task)
        if selected:
            return [k for k in every if k in selected]
        return list(TABLE_DEFAULT[task] if table else every)

    table_like = format in (Format.table, Format.markdown)
    if view is By.run:
        chosen = [
            k
            for task in ("classification", "regression")
            if task in tasks
            for k in keys(task, table_like)
        ]
        table = runs_table(runs, chosen, baseline)
        grids = rep.runs_grids(table)
        render = {
            Format.json: lambda: json.dumps(runs_json(table), indent=2, allow_nan=False),
            Format.csv: lambda: rep.runs_csv(table),
        }
    else:
        by_task = {task: keys(task, table_like) for task in tasks}
        grids = rep.trajectory_grids(runs, by_task)
        render = {
            Format.json: lambda: rep.trajectory_json(runs, by_task),
            Format.csv: lambda: rep.trajectory_csv(runs, by_task),
        }
    render[Format.markdown] = lambda: rep.grids_markdown(grids)
    render[Format.table] = lambda: rep.grids_text(grids, width or 160)
    if format is Format.table and output is None:
        rep.print_grids(grids, width=width)
    else:
        write_output(render[format](), output)


@app.command()
def compare(
    run_a: Annotated[
        Path, typer.Argument(help="A run: a directory of stores (as extract writes).")
    ],
    run_b: Annotated[Path, typer.Argument(help="The run to compare with it.")],
    at: Annotated[str, typer.Option(help="The metric to match the runs at.")] = "nc1",
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric", "-m", help="Comma-separated keys to compare (default: the main ones)."
        ),
    ] = None,
    levels: Annotated[
        str | None,
        typer.Option(help="Comma-separated levels of --at (default: 5 inside both runs' range)."),
    ] = None,
    n_levels: Annotated[int, typer.Option(help="How many default levels.", min=1)] = 5,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
    plot_dir: Annotated[
        Path | None, typer.Option("--plot", help="Also draw the matched panel into this directory.")
    ] = None,
    width: Annotated[int | None, typer.Option(help="Table width in characters.")] = None,
) -> None:
    """Compare two runs at matched values of a metric (e.g. NC2 at equal NC1), and how fast
    each reaches those levels."""

    def body() -> None:
        import json

        from ncinspect.api import analyze
        from ncinspect.render import tables as rep
        from ncinspect.runs import compare_runs, comparison_json, group_runs

        chosen = parse_metrics(metric)
        level_values = None
        if levels is not None:
            try:
                level_values = [float(x) for x in levels.split(",") if x.strip()]
            except ValueError:
                raise UsageError(
                    f"--levels: expected numbers like 1,0.1,0.01, got {levels!r}"
                ) from None
        pair = []
        for path in (run_a, run_b):
            runs = group_runs(analyze([path]))
            if len(runs) != 1:
                names = ", ".join(r.name for r in runs)
                raise UsageError(f"{path}: expected one run, found {len(runs)} ({names})")
            pair.append(runs[0])
        if pair[0].name == pair[1].name and run_a.resolve() != run_b.resolve():
            pair[1].name = str(run_b)
        comparison = compare_runs(pair[0], pair[1], at, chosen, level_values, n_levels)
        if plot_dir is not None:
            from ncinspect.render.plots import plot_matched

            for path in plot_matched(comparison, plot_dir):
                print(f"wrote {path}", file=sys.stderr)
        grids = rep.comparison_grids(comparison)
        if format is Format.table and output is None:
            rep.print_grids(grids, width=width)
            return
        render = {
            Format.json: lambda: json.dumps(comparison_json(comparison), indent=2, allow_nan=False),
            Format.csv: lambda: rep.comparison_csv(comparison),
            Format.markdown: lambda: rep.grids_markdown(grids),
            Format.table: lambda: rep.grids_text(grids, width or 160),
        }
        write_output(render[format](), output)

    guarded(body)


@app.command()
def plot(
    paths: PathsArg,
    out: Annotated[Path, typer.Option("--out", help="Directory for the figures.")] = Path("plots"),
    metrics: Annotated[
        str | None, typer.Option("--metrics", "-m", help="Comma-separated keys to draw.")
    ] = None,
    formats: Annotated[
        str, typer.Option("--formats", help="Comma-separated: png, svg, pdf.")
    ] = "png,svg",
    compare_runs_: Annotated[
        str | None,
        typer.Option(
            "--compare", help="A,B: also draw the matched panel of runs A and B (at --at)."
        ),
    ] = None,
    at: Annotated[str, typer.Option(help="The metric --compare matches at.")] = "nc1",
    label: Annotated[
        list[str] | None, typer.Option(help="RUN=TEXT: a legend label (repeatable).")
    ] = None,
) -> None:
    """Draw metric-vs-epoch panels (one line per run), NRC3-vs-gamma for regression runs, and
    optionally the matched NC2-vs-NC1 panel. Needs the `plot` extra (matplotlib)."""

    def body() -> None:
        from ncinspect.api import analyze
        from ncinspect.render.plots import plot_matched, plot_runs
        from ncinspect.runs import compare_runs, group_runs

        chosen = parse_metrics(metrics)
        fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
        runs = group_runs(analyze(paths), parse_labels(label))
        written = plot_runs(runs, out, chosen, fmts)
        if compare_runs_ is not None:
            names = compare_runs_.split(",")
            by_name = {r.name: r for r in runs}
            missing = [n for n in names if n not in by_name]
            if len(names) != 2 or missing:
                raise UsageError(
                    f"--compare: expected two run names A,B; runs: {', '.join(by_name)}"
                )
            comparison = compare_runs(by_name[names[0]], by_name[names[1]], at)
            written += plot_matched(comparison, out, fmts)
        for path in written:
            print(path)

    guarded(body)


# ---------------------------------------------------------------------------------------------
# ncinspect extract / inspect


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class TaskChoice(str, Enum):
    auto = "auto"
    classification = "classification"
    regression = "regression"


class InspectFormat(str, Enum):
    text = "text"
    json = "json"


class StderrProgress:
    """A progress line per checkpoint on stderr (implements extract.ProgressHook)."""

    def __init__(self) -> None:
        self.label = ""
        self.total: int | None = None
        self.done = 0
        self.t0 = 0.0

    def start(self, label: str, total: int | None) -> None:
        import time

        self.label, self.total, self.done, self.t0 = label, total, 0, time.perf_counter()

    def advance(self, n: int) -> None:
        self.done += n
        if sys.stderr.isatty():
            of = f"/{self.total}" if self.total else ""
            print(f"\r{self.label}: {self.done}{of} rows", end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        import time

        seconds = time.perf_counter() - self.t0
        end = "\r" if sys.stderr.isatty() else ""
        print(f"{end}{self.label}: {self.done} rows in {seconds:.1f} s", file=sys.stderr)


@app.command()
def extract(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            help="Checkpoint files or run directories (every checkpoint in a directory, in "
            "epoch order; each directory is a run). Formats are detected from content.",
            exists=True,
            show_default=False,
        ),
    ],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="An .npz or .h5 file (inputs x/inputs/data/images, labels or targets "
            "y/labels/targets), a CIFAR-10/100 python batch folder, or module:factory / "
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
        typer.Option(help="Split name (default: from the data file's name, else 'train')."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Output: OUT/<run>/<checkpoint file name>.<split>.h5.")
    ] = Path("features"),
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per batch.", min=1)] = 256,
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
    unsafe_pickle: Annotated[
        bool,
        typer.Option(
            "--unsafe-pickle",
            help="Allow full unpickling (whole pickled modules). RUNS CODE FROM THE FILE.",
        ),
    ] = False,
    state_key: Annotated[
        str | None, typer.Option("--state-key", help="Wrapper-dict entry holding the weights.")
    ] = None,
    data_keys: Annotated[
        str | None, typer.Option("--data-keys", help="INPUTS,LABELS: array names in the data.")
    ] = None,
    data_arg: Annotated[
        list[str] | None,
        typer.Option("--data-arg", help="KEY=VALUE for a data factory (repeatable)."),
    ] = None,
    code_path: Annotated[
        list[Path] | None,
        typer.Option(
            "--code-path",
            help="Directory to make importable and to trust for model code that a run.json / "
            "config.json beside a checkpoint names (repeatable).",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    run: Annotated[
        str | None, typer.Option(help="Run name (default: the checkpoint's directory name).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
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
) -> None:
    """Extract penultimate features (the head's input) of checkpoints into HDF5 feature stores.

    Under torchrun (torchrun --nproc-per-node P -m ncinspect extract ...) each process takes
    its share of the data and writes NAME.shard-RRRRR-of-PPPPP.h5; report reads the set as one.
    """

    def body() -> None:
        from ncinspect.extraction.run import (
            ExtractConfig,
            parse_assignments,
            parse_data_keys,
            run_extract,
        )

        config = ExtractConfig(
            checkpoints=tuple(checkpoints),
            data=data,
            model=model,
            model_args=parse_assignments(model_arg, "--model-arg"),
            head=head,
            split=split,
            out=out,
            batch_size=batch_size,
            workers=workers,
            device=device,
            precision=precision.value,
            task=task.value,
            limit=limit,
            overwrite=overwrite,
            unsafe_pickle=unsafe_pickle,
            state_key=state_key,
            data_keys=parse_data_keys(data_keys),
            data_args=parse_assignments(data_arg, "--data-arg"),
            code_paths=tuple(code_path or ()),
            run=run,
            stats_only=stats_only,
            drop_nonfinite=drop_nonfinite,
        )
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
            print(f"{o.name}  {note}")

    guarded(body)


@app.command("inspect")
def inspect_cmd(
    path: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint, feature store, dump, data file or directory.",
            exists=True,
            show_default=False,
        ),
    ],
    format: Annotated[
        InspectFormat, typer.Option("--format", "-f", help="Output format.")
    ] = InspectFormat.text,
    unsafe_pickle: Annotated[
        bool,
        typer.Option("--unsafe-pickle", help="Also load full pickles (RUNS CODE FROM THE FILE)."),
    ] = False,
    code_path: Annotated[
        list[Path] | None,
        typer.Option(
            "--code-path",
            help="Directory to make importable for pickled classes (repeatable).",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Show what a checkpoint, store, dump or data file holds: format, tensors or datasets,
    head candidates, and whether a checkpoint loads safely (nothing from the file is run)."""

    def body() -> None:
        import json

        from ncinspect.extraction.checkpoint import add_code_paths
        from ncinspect.extraction.inspection import describe, format_description

        add_code_paths(code_path or ())
        desc = describe(path, unsafe_pickle=unsafe_pickle)
        if format is InspectFormat.json:
            text = json.dumps(desc, indent=2, allow_nan=False)
        else:
            text = format_description(desc)
        write_output(text, output)

    guarded(body)


# ---------------------------------------------------------------------------------------------
# ncinspect ufm: unconstrained-feature-model theory

ufm_app = typer.Typer(
    name="ufm",
    help="Unconstrained-feature-model theory: closed-form optima vs. a numerical L-BFGS solution.",
    no_args_is_help=True,
)
app.add_typer(ufm_app, name="ufm")


class UfmFormat(str, Enum):
    table = "table"
    json = "json"


# Options shared by both `ufm` commands.
UfmTol = Annotated[float, typer.Option(help="Gradient-norm tolerance of L-BFGS.", min=0.0)]
UfmMaxIter = Annotated[int, typer.Option("--max-iter", help="L-BFGS iteration cap.", min=1)]
UfmFormatOpt = Annotated[UfmFormat, typer.Option("--format", "-f", help="Output format.")]
WidthOpt = Annotated[int | None, typer.Option(help="Table width in characters.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Do not print warnings.")]
UfmPlotOpt = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        help="Also draw the sweep into FILE (.png, .svg or .pdf; needs the plot extra).",
        dir_okay=False,
    ),
]


def _emit_ufm(reports: list[dict], format: UfmFormat, width: int | None, quiet: bool) -> None:
    import json

    from ncinspect.metrics.results import jsonable

    if not quiet:
        for rep in reports:
            for line in rep.get("numerical", {}).get("warnings", []):
                print(f"warning: {line}", file=sys.stderr)
    if format is UfmFormat.json:
        data = jsonable(reports[0] if len(reports) == 1 else reports)
        write_output(json.dumps(data, indent=2, allow_nan=False), None)
        return
    from ncinspect.render import tables as rep_module

    rep_module.print_ufm(reports, width=width)


@ufm_app.command("classify")
def ufm_classify(
    classes: Annotated[int, typer.Option("--classes", help="Number of classes K.", min=2)],
    dim: Annotated[int, typer.Option("--dim", help="Feature dimension D (>= K - 1).", min=1)],
    per_class: Annotated[int, typer.Option("--per-class", help="Samples per class n.", min=1)],
    lambda_w: Annotated[float, typer.Option("--lambda-w", help="Weight decay on W.")],
    lambda_h: Annotated[float, typer.Option("--lambda-h", help="Weight decay on the features H.")],
    lambda_b: Annotated[
        float, typer.Option("--lambda-b", help="Weight decay on b.", min=0.0)
    ] = 0.0,
    alpha: Annotated[
        str,
        typer.Option(
            "--alpha", help="Label smoothing in [0, 1], or a comma list (e.g. 0,0.1,0.3) to sweep."
        ),
    ] = "0",
    seed: Annotated[int, typer.Option(help="Seed of the solver's random start.")] = 0,
    tol: UfmTol = 1e-8,
    max_iter: UfmMaxIter = 5000,
    format: UfmFormatOpt = UfmFormat.table,
    width: WidthOpt = None,
    quiet: QuietOpt = False,
    plot: UfmPlotOpt = None,
) -> None:
    """Balanced classification UFM (CE or label smoothing): closed form vs. L-BFGS."""

    def body() -> None:
        from ncinspect import ufm

        alphas = ufm.parse_float_list(alpha, "--alpha")
        _check_ufm_plot(plot)
        reports = ufm.sweep_classify(
            classes,
            per_class,
            lambda_w,
            lambda_h,
            alphas,
            d=dim,
            lambda_b=lambda_b,
            seed=seed,
            tol=tol,
            max_iter=max_iter,
        )
        _emit_ufm(reports, format, width, quiet)
        _draw_ufm_plot(reports, plot)

    guarded(body)


def _check_ufm_plot(plot: Path | None) -> None:
    if plot is not None:
        from ncinspect.render.plots import check_plot_file

        check_plot_file(plot)


def _draw_ufm_plot(reports: list[dict], plot: Path | None) -> None:
    if plot is not None:
        from ncinspect.render.plots import plot_ufm_sweep

        print(f"wrote {plot_ufm_sweep(reports, plot)}", file=sys.stderr)


@ufm_app.command("regress")
def ufm_regress(
    dim: Annotated[int, typer.Option("--dim", help="Feature dimension D (>= T).", min=1)],
    lambda_w: Annotated[
        str, typer.Option("--lambda-w", help="Weight decay on W, or a comma list to sweep.")
    ],
    lambda_h: Annotated[
        str, typer.Option("--lambda-h", help="Weight decay on H, or a comma list to sweep.")
    ],
    targets_cov: Annotated[
        str | None,
        typer.Option(
            "--targets-cov",
            help="Target covariance Sigma: a literal like [[2,1],[1,2]] or a .npy/.txt/.csv file.",
        ),
    ] = None,
    targets: Annotated[
        Path | None,
        typer.Option(
            "--targets", help="Targets (N, T) as .npy/.txt/.csv.", exists=True, dir_okay=False
        ),
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", help="N when generating targets from --targets-cov.", min=2)
    ] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the targets and of the solver's start.")] = 0,
    tol: UfmTol = 1e-8,
    max_iter: UfmMaxIter = 5000,
    format: UfmFormatOpt = UfmFormat.table,
    width: WidthOpt = None,
    quiet: QuietOpt = False,
    plot: UfmPlotOpt = None,
) -> None:
    """Regression UFM (Andriopoulos et al. 2024, Thm 4.1): closed form vs. L-BFGS."""

    def body() -> None:
        from ncinspect import ufm

        if (targets_cov is None) == (targets is None):
            raise UsageError("give exactly one of --targets-cov MATRIX or --targets FILE")
        _check_ufm_plot(plot)
        pairs = ufm.zip_lambdas(
            ufm.parse_float_list(lambda_h, "--lambda-h"),
            ufm.parse_float_list(lambda_w, "--lambda-w"),
        )
        sigma = None if targets_cov is None else ufm.parse_matrix(targets_cov, "--targets-cov")
        y = None if targets is None else ufm.load_targets(targets)
        reports = ufm.sweep_regress(
            sigma, pairs, targets=y, d=dim, n=samples, seed=seed, tol=tol, max_iter=max_iter
        )
        _emit_ufm(reports, format, width, quiet)
        _draw_ufm_plot(reports, plot)

    guarded(body)


def _version(value: bool) -> None:
    if value:
        print(f"ncinspect {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Neural-collapse diagnostics for saved checkpoints and feature stores."""


def _terminate(signum: int, frame: Any) -> None:
    raise interrupt(Terminated())


def _interrupt(signum: int, frame: Any) -> None:
    raise interrupt(KeyboardInterrupt())


def main(argv: list[str] | None = None) -> Any:
    # SIGTERM cleans up like Ctrl-C (partial stores removed, locks released) unless the
    # embedding program installed its own handler. Both handlers also record the interrupt, so
    # that one Python drops (raised inside a weakref callback or `__del__`) is raised again at
    # the next batch or block (`errors.check_interrupt`) and still sets the exit code.
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminate)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _interrupt)
    return app(args=argv, prog_name="ncinspect")
