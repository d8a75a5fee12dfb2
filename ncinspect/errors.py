"""The one exception family of ncinspect.

Owns: the error types and their exit codes. Every error a user can cause is an
`NcInspectError`; the CLI turns it into one line on stderr and its `exit_code`.
Never raised for programming errors (those stay ordinary exceptions).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# What a terminal would act on rather than show: C0 controls (newline and tab included), DEL, C1
# controls, the bidirectional overrides and isolates that reorder what is shown, and the lone
# surrogates a file name that is not UTF-8 decodes to (which stdout could not even encode).
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    return _NAMED.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text: object) -> str:
    """`text` with every control character (ESC, BEL, CR, newline, tab, DEL, C1, bidi overrides)
    written as a visible escape (`\\x1b`, `\\n`, `\\u202e`): names and messages that come from
    files can then neither drive the terminal nor forge lines. Printable text is unchanged."""
    s = str(text)
    return _INVISIBLE.sub(_escape, s) if _INVISIBLE.search(s) else s


class NcInspectError(Exception):
    """Base class: a problem with the user's input or request. Exit code 1."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class UsageError(NcInspectError):
    """The command line asks for something impossible (bad option value). Exit code 2."""

    exit_code = 2


class InputError(NcInspectError):
    """A file exists but its content is not what ncinspect expects."""


class StoreError(InputError):
    """An HDF5 feature store is missing a dataset, has a wrong shape, dtype or format version."""


class DumpError(InputError):
    """A foreign feature dump (.npz, .pt, .safetensors) lacks or misshapes an array."""


class CheckpointError(InputError):
    """A checkpoint cannot be read safely or does not fit the model."""


class DataError(InputError):
    """A data source (inputs and labels or targets) is missing keys or malformed."""


class ModelError(InputError):
    """The model cannot be built or its head cannot be found."""


class OutputError(NcInspectError):
    """An output path cannot be written (read-only, a directory, disk full)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a scheduler's preemption, `kill`, torchrun stopping a job): raised by the
    CLI's handler in the main thread and cleaned up after exactly like Ctrl-C, which every
    `except KeyboardInterrupt` / `finally` on the way already does; exit code 143."""


# The interrupt (KeyboardInterrupt or Terminated) the CLI's signal handlers raised, kept until the
# process ends: Python drops an exception raised inside a weakref callback or a `__del__` that a
# signal happened to interrupt ("Exception ignored in ..."), so the work would go on.
_pending: KeyboardInterrupt | None = None


def interrupt(exc: KeyboardInterrupt) -> KeyboardInterrupt:
    """Record `exc` as the pending interrupt and return it (for the handler to raise)."""
    global _pending
    _pending = exc
    return exc


def pending_interrupt() -> KeyboardInterrupt | None:
    """The interrupt a signal handler raised in this process, if any (it may have been dropped)."""
    return _pending


def check_interrupt() -> None:
    """At a safe point of a long loop (each batch, each block): raise the pending interrupt
    again, in case Python dropped the first raise. Nothing pending: nothing happens."""
    if _pending is not None:
        raise type(_pending)()


# `shielded()` blocks the main thread is in, and the interrupt that arrived inside one.
_shield_depth = 0
_deferred: KeyboardInterrupt | None = None


def signalled(exc: KeyboardInterrupt) -> None:
    """For the CLI's signal handlers: record `exc` and raise it, or, inside `shielded()`,
    keep it for the end of the block."""
    global _deferred
    interrupt(exc)
    if _shield_depth:
        _deferred = exc
        return
    raise exc


@contextmanager
def shielded() -> Iterator[None]:
    """A short step that must not stop half-way (taking or giving back a store's lock): an
    interrupt arriving inside is raised when the block ends, not where it arrived. Python code
    outside ncinspect (filelock's) may not clean up after an exception raised at every line, and
    an exception raised in its finalizers is dropped. Signal handlers run in the main thread:
    elsewhere this does nothing."""
    global _shield_depth, _deferred
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _shield_depth += 1
    try:
        yield
    finally:
        _shield_depth -= 1
        if not _shield_depth and _deferred is not None:
            exc, _deferred = _deferred, None
            raise exc


@contextmanager
def reading(path: str | Path, error: type[InputError], what: str) -> Iterator[None]:
    """Turn whatever a third-party parser raises on a damaged file into one `error` line.

    zipfile, pickle, numpy, h5py, torch and safetensors each raise their own mix (KeyError,
    UnicodeDecodeError, RuntimeError, struct.error, zlib.error, ...) on truncated or corrupted
    input; inside this block every such exception becomes `error` naming the file. ncinspect's
    own errors pass through unchanged; KeyboardInterrupt and SystemExit are not caught.
    """
    try:
        yield
    except NcInspectError:
        raise
    except MemoryError as exc:
        raise error(
            f"cannot be read as {what}: it claims more memory than is available (damaged or "
            "crafted sizes)",
            path=path,
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a damaged file can make a parser raise anything
        text = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
        raise error(
            f"cannot be read as {what}: the file is damaged or is not {what} ({detail})",
            path=path,
        ) from exc
