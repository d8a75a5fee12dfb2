"""The command line: parse options, call one library function, render. Nothing else.

One module per command (`report`, `compare`, `plot`, `extract`, `inspect`, `ufm`), the options
and helpers they share in `common`, and the Typer `app` with `main` (the console script) in
`app`. Results go to stdout, diagnostics to stderr, and every `NcInspectError` becomes one line
on stderr and a non-zero exit code. Never does math or reads a file format itself; torch, h5py
and rich are imported inside commands so `ncinspect --help` stays instant.
"""

from ncinspect.cli.app import app, main

__all__ = ["app", "main"]
