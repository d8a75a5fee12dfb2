"""What ncinspect may open: regular files only, and in a directory walk only entries that stay
inside the directory.

Owns `regular_file` (called before anything opens a path: a FIFO blocks until a writer comes, a
device never ends), `inside` (what a walk may take: a symlink leaving the folder, a dangling one,
a FIFO, device or socket is passed over) and `bounded_text` (a small text file such as a config,
read only when it is a regular file under a size bound). A path named on the command line is
followed when it is a symlink; one found in a folder is not followed out of it. Opens nothing but
the file it is asked to read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ncinspect.errors import InputError

_SPECIAL = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def regular_file(path: str | Path, error: type[InputError] = InputError) -> os.stat_result:
    """The file's status (a symlink followed); `error` unless it is a regular file.

    Called before anything opens `path`: opening a FIFO blocks until a writer comes, and a
    device (/dev/zero, /dev/urandom) never ends. An allowlist: only S_ISREG passes.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error("no such file or directory", path=path) from None
    except OSError as exc:
        raise error(f"cannot be read ({exc.strerror or exc})", path=path) from None
    if not stat.S_ISREG(st.st_mode):
        what = next((name for test, name in _SPECIAL if test(st.st_mode)), "not a plain file")
        raise error(f"is {what}, not a regular file; ncinspect reads regular files only", path=path)
    return st


def inside(root: str | Path, entry: str | Path) -> bool:
    """Whether `entry`, found in directory `root`, is a regular file whose real path (links
    resolved) lies inside `root`'s real path: what a directory walk may take. A symlink leaving
    the folder, a dangling one, a FIFO, device or socket is not."""
    try:
        real = Path(os.path.realpath(entry))
        base = Path(os.path.realpath(root))
        return real.is_relative_to(base) and stat.S_ISREG(os.stat(real).st_mode)
    except (OSError, ValueError):
        return False


def bounded_text(path: str | Path, limit: int, error: type[InputError] = InputError) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes (`error` otherwise): a config
    file is read whole, so its size is checked before it is read."""
    st = regular_file(path, error)
    if st.st_size > limit:
        raise error(f"is {st.st_size} bytes, more than the {limit} a config may have", path=path)
    with open(path, "rb") as fh:
        raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise error(f"is more than the {limit} bytes a config may have", path=path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"is not UTF-8 text ({exc.reason} at byte {exc.start})", path=path) from None
