"""The one exception family of ncinspect.

Owns: the error types and their exit codes. Every error a user can cause is an
`NcInspectError`; the CLI turns it into one line on stderr and its `exit_code`.
Never raised for programming errors (those stay ordinary exceptions).
"""

from __future__ import annotations

from pathlib import Path


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
