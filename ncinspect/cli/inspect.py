"""`ncinspect inspect`: what a checkpoint, store, dump or data file holds, loading nothing unsafe.

Owns: the inspect command's options. Never opens the file itself (`ncinspect.extraction.inspection`
describes it, `ncinspect.render.describe` writes the text) and never runs code from it unless
`--trust-code` is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ncinspect.cli.common import InspectFormat, guarded, write_output

app = typer.Typer()


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
    trust_code: Annotated[
        bool,
        typer.Option(
            "--trust-code",
            "--unsafe-pickle",
            help="Also load whole pickles (RUNS CODE FROM THE FILE). --unsafe-pickle is an alias.",
        ),
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

        from ncinspect.extraction.inspection import describe
        from ncinspect.extraction.trust import add_code_paths
        from ncinspect.render.describe import format_description

        add_code_paths(code_path or ())
        desc = describe(path, trust_code=trust_code)
        if format is InspectFormat.json:
            text = json.dumps(desc, indent=2, allow_nan=False)
        else:
            text = format_description(desc)
        write_output(text, output)

    guarded(body)
