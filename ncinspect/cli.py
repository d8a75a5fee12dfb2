"""The command line: parse, build a config, call one library function, render. Nothing else.

Owns: Typer commands and options, exit codes (0 ok, 1 bad input, 2 bad usage, 130 interrupted),
and turning every `NcInspectError` into one line on stderr. Never does math or file formats.
Heavy modules (torch, h5py, rich tables) are imported inside commands so `--help` stays instant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ncinspect import __version__
from ncinspect.errors import NcInspectError, OutputError, UsageError

app = typer.Typer(
    name="ncinspect",
    help="Neural-collapse diagnostics for saved checkpoints and feature stores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


def fail(message: str, code: int) -> typer.Exit:
    print(f"ncinspect: error: {message}", file=sys.stderr)
    return typer.Exit(code)


def guarded(fn: Callable[[], T]) -> T:
    """Run a command body; user errors become one stderr line and an exit code, never a trace."""
    try:
        return fn()
    except NcInspectError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None


def parse_metrics(text: str | None) -> list[str] | None:
    """`--metrics nc1,nc3` -> keys (validated against the catalogue); `all` -> every key."""
    from ncinspect.keys import METRICS

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
        tmp.unlink(missing_ok=True)
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
            help="Regression: LAMBDA_H,LAMBDA_W; NRC3 uses gamma = LAMBDA_H * LAMBDA_W.",
        ),
    ] = None,
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
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file (atomically) instead of stdout."),
    ] = None,
    width: Annotated[
        int | None, typer.Option(help="Table width in characters (default: the terminal's).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print warnings.")] = False,
) -> None:
    """Compute the collapse metrics of stores and dumps and print them."""

    def body() -> None:
        from ncinspect import report as rep
        from ncinspect.api import analyze

        if gamma is not None and ufm_lambdas is not None:
            raise UsageError("--gamma and --ufm-lambdas are alternatives; give one")
        selected = parse_metrics(metrics)
        skipped: list[str] = []
        results = analyze(
            paths,
            chunk_rows=chunk_rows,
            drop_nonfinite=drop_nonfinite,
            gamma=gamma,
            ufm_lambdas=parse_pair(ufm_lambdas, "--ufm-lambdas"),
            skipped=skipped,
        )
        if not quiet:
            for line in skipped + rep.warning_lines(results):
                print(line, file=sys.stderr)
        if not results:
            raise NcInspectError("no feature store or dump found in " + ", ".join(map(str, paths)))
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


def main(argv: list[str] | None = None) -> Any:
    return app(args=argv, prog_name="ncinspect")
