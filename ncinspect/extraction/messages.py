"""The wording every extraction error shares.

Owns `hint` (the `ncinspect inspect PATH` pointer each extraction error ends with), `with_hint`
(adds it to an error that lacks it) and `first_line` (a library exception's first line, so that
an error stays one line). Never raises and never reads files.
"""

from __future__ import annotations

from pathlib import Path

from ncinspect.errors import NcInspectError


def hint(path: str | Path) -> str:
    """The pointer every extraction error ends with."""
    return f"run `ncinspect inspect {path}` to see what it holds"


def with_hint(exc: NcInspectError, path: Path | None) -> NcInspectError:
    """The same error, ending with the `ncinspect inspect` pointer when it does not yet."""
    if path is None or "ncinspect inspect" in exc.message:
        return exc
    new = type(exc)(f"{exc.message}; {hint(path)}", path=exc.path)
    new.__cause__ = exc.__cause__
    return new


def first_line(text: str) -> str:
    """The first line of an exception's text (at most 200 characters)."""
    line = text.strip().splitlines()[0] if text.strip() else "no detail"
    return line[:200]
