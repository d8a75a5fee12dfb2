"""Output files that nothing planted in their folder can redirect: a private temporary file beside
the destination, renamed over it when complete.

Owns: `AtomicFile` and the temporary names, `.NAME.partial-RANDOM-PID` (`partial_pid` reads the
writer's PID back, for `io.locking` to remove a killed writer's leftovers). Stores, `report -o`,
`inspect -o` and plots are all written through it. Knows nothing of file formats.

An output folder may hold files someone else planted, symbolic and hard links included. So:
- the temporary file is always a new one: created with O_CREAT | O_EXCL | O_NOFOLLOW under an
  unpredictable name (`tempfile.mkstemp`, mode 0600), so nothing at a guessed name is followed,
  truncated or written; it is written through that descriptor (a library that opens files by
  name gets `/proc/self/fd/N`, the same file whatever happens to its name meanwhile);
- the rename (`os.replace`) replaces the directory entry at the final name: a link planted there
  is replaced by the new file, its target never written;
- a temporary file is removed only while it is still the file this process created.
The complete file gets the usual permissions (0666 less the umask) just before the rename.
Never opens an existing file for writing and never follows a link to create or remove one.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from types import TracebackType

from ncinspect.errors import OutputError

# mkstemp's random part: 8 of [a-z0-9_]; an older ncinspect wrote `.NAME.partial-PID`
_TAIL = re.compile(r"(?:[a-z0-9_]{8}-)?(\d+)")


def partial_prefix(dest: Path) -> str:
    """The start of every temporary name of `dest`: `.NAME.partial-`."""
    return f".{dest.name}.partial-"


def partial_pid(name: str, dest: Path) -> int | None:
    """The PID of the writer of a temporary file of `dest` called `name`; None when `name` is not
    one (`.NAME.partial-RANDOM-PID`, or `.NAME.partial-PID` from an older ncinspect)."""
    prefix = partial_prefix(dest)
    if not name.startswith(prefix):
        return None
    found = _TAIL.fullmatch(name[len(prefix) :])
    return int(found.group(1)) if found else None


def _umask() -> int:
    """This process's umask, read without changing it where Linux says it (other threads may be
    creating files)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class AtomicFile:
    """A new private file beside `dest`, renamed over `dest` by `commit()`.

    Use as a context manager: leaving it without `commit()` (an exception, Ctrl-C) removes the
    temporary file. OSError when the file cannot be created (a missing or unwritable folder).
    """

    def __init__(self, dest: str | Path) -> None:
        self.dest = Path(dest)
        # O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600; the PID last, for stale clean-up
        fd, name = tempfile.mkstemp(
            prefix=partial_prefix(self.dest), suffix=f"-{os.getpid()}", dir=self.dest.parent
        )
        self.fd: int | None = fd
        self.path = Path(name)
        self._created = os.fstat(fd)

    def opener_path(self) -> str:
        """A name that opens this very file, for libraries that open by name (h5py): the
        descriptor's `/proc/self/fd/N` where there is one, else the temporary name."""
        assert self.fd is not None, "the temporary file is closed"
        proc = f"/proc/self/fd/{self.fd}"
        return proc if os.path.exists(proc) else str(self.path)

    def _still_ours(self) -> bool:
        try:
            return os.path.samestat(os.lstat(self.path), self._created)
        except OSError:
            return False

    def _close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def commit(self) -> Path:
        """Give the file the usual permissions and rename it to `dest` (a link there is replaced,
        never followed). OSError when that fails; the temporary file is then still there."""
        assert self.fd is not None, "commit() once, before leaving the with-block"
        if hasattr(os, "fchmod"):  # not on Windows before Python 3.13
            os.fchmod(self.fd, 0o666 & ~_umask())
        self._close()
        if not self._still_ours():
            raise OutputError(
                f"the temporary file '{self.path}' was replaced or removed while being written; "
                "nothing was written (is someone else writing into this folder?)",
                path=self.dest,
            )
        os.replace(self.path, self.dest)
        return self.dest

    def discard(self) -> None:
        """Close and remove the temporary file, if it is still the one created here."""
        try:
            self._close()
        except OSError:
            pass
        if self._still_ours():
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.fd is not None or exc_type is not None:
            self.discard()
