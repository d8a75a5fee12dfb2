"""One writer per output store: an advisory lock beside it, and clean-up of dead writers' files.

Owns: `store_lock(path)`, a context manager held while one store is checked and written, and the
removal of temporary `.NAME.partial-RANDOM-PID` files (`io.atomic`) whose process no longer runs
(left behind by a SIGKILL, a power cut or an out-of-memory kill): only plain files, by name (a link
is never followed), never one of a live process. Knows nothing of HDF5 or models; never blocks.

The lock is a `filelock` lock (`flock` on Unix) on `.NAME.lock` in the store's directory, taken
without waiting: a second `ncinspect extract` writing the same store is refused with an
`OutputError` naming the holder's PID, which the holder writes into the lock file. The kernel
releases the lock when its holder exits, however it exits, so a killed run never leaves a stale
lock. The lock file is never followed through a symbolic link: one planted at its name is refused.
filelock opens it with O_RDWR | O_NOFOLLOW (O_CREAT | O_EXCL first), never O_TRUNC; the PID is
written only once the open file proves to be a regular file of this account with no other name
(`_write_pid`): a hard link planted at the lock name (to a victim's file) is refused unwritten.
Where `flock` is missing (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from errno import ELOOP
from pathlib import Path
from typing import TYPE_CHECKING

from ncinspect.errors import OutputError, shielded
from ncinspect.io.atomic import partial_pid

if TYPE_CHECKING:
    import filelock


def lock_name(store: Path) -> Path:
    """The lock file of a store: `.NAME.lock` beside it."""
    return store.with_name(f".{store.name}.lock")


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_partials(store: Path) -> list[Path]:
    """Temporary files of this store (`.NAME.partial-RANDOM-PID`, or an older ncinspect's
    `.NAME.partial-PID`) whose writing process is gone: plain files only, never a link."""
    try:
        entries = list(store.parent.iterdir())
    except OSError:
        return []
    stale: list[Path] = []
    for p in entries:
        pid = partial_pid(p.name, store)
        if pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        try:
            if stat.S_ISREG(p.lstat().st_mode):  # what a writer leaves; a planted link is not
                stale.append(p)
        except OSError:
            continue
    return sorted(stale)


def remove_stale_partials(store: Path) -> list[Path]:
    """Delete the dead writers' temporary files of this store; return what was removed."""
    removed: list[Path] = []
    for p in stale_partials(store):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


class _NotALockFile(Exception):
    """The file at the lock name is not one this process may write (see `_write_pid`)."""


def _write_pid(fd: int) -> None:
    """Record the holder in the lock file (filelock calls this on the locked descriptor).

    Only a regular file of this account with no other name is truncated and written; anything
    else raises `_NotALockFile` (filelock then gives the lock back) and is left as it is."""
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode):
        raise _NotALockFile("is not a regular file")
    if found.st_uid != os.geteuid():
        raise _NotALockFile(f"belongs to another account (uid {found.st_uid})")
    if found.st_nlink > 1:  # 0: its holder removed it meanwhile; nobody else can see it
        raise _NotALockFile(f"has {found.st_nlink} names (a hard link)")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _holder(path: Path) -> str:
    """The PID recorded in a held lock file, or "unknown" (not yet written, or unreadable)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return "unknown"
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    finally:
        os.close(fd)
    return text if text.isdigit() else "unknown"


def _symlink_refused(path: Path, store: Path) -> OutputError:
    return OutputError(
        f"lock file '{path}' is a symbolic link, expected a regular file or none; remove it "
        "(ncinspect never writes through a link planted beside its output)",
        path=store,
    )


def _make_parent(parent: Path) -> list[Path]:
    """Create the missing directories above a store; return them (deepest last)."""
    missing = [p for p in [parent, *parent.parents] if not p.exists()]
    missing.reverse()
    parent.mkdir(parents=True, exist_ok=True)
    return missing


def _take(path: Path, store: Path) -> filelock.BaseFileLock | None:
    """Take the lock on `path` at once; None where no lock can be taken (see `store_lock`)."""
    import filelock  # imported here: a slow import that only a writer needs

    while True:
        if path.is_symlink():
            raise _symlink_refused(path, store)
        # on_acquired writes the PID; filelock opens the file with O_NOFOLLOW, so a link
        # planted after the check above fails the open (ELOOP) instead of being followed.
        lock = filelock.FileLock(path, blocking=False, on_acquired=_write_pid)
        try:
            lock.acquire()
        except filelock.Timeout:
            # The holder may have removed the file between our open and our lock: then the
            # lock we got is on a file nobody else sees, and filelock gave it up. Try again
            # when no file is at that name; a file there is another writer's.
            if not os.path.lexists(path):
                continue
            raise OutputError(
                f"another ncinspect extract (pid {_holder(path)}) is writing this store; "
                "wait for it or choose another --out",
                path=store,
            ) from None
        except _NotALockFile as exc:
            raise OutputError(
                f"lock file '{path}' {exc}, expected a file of its own; remove it (ncinspect "
                "never writes through a link planted beside its output)",
                path=store,
            ) from None
        except OSError as exc:
            if exc.errno == ELOOP:
                raise _symlink_refused(path, store) from None
            if os.path.lexists(path):  # e.g. filelock's own refusal of a hard link
                raise OutputError(
                    f"lock file '{path}' cannot be used ({exc.strerror or exc}); remove it",
                    path=store,
                ) from None
            return None  # no lock can be taken here; the store's own write reports why
        return lock


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold the lock of one output store; refuse at once when another process holds it.

    When the lock file cannot be created (an unwritable directory, a parent that is a file) no
    lock is taken and the caller's own write reports the problem, so the error names the store.
    Directories created only for the lock are removed again if nothing was written into them.
    The lock file is removed on release.

    Taking and giving back the lock are shielded from Ctrl-C and SIGTERM (`errors.shielded`):
    one arriving there is raised once the lock is held, or once it is released and its file
    removed, so an interrupt never leaves the lock file behind.
    """
    import filelock  # imported here: a slow import that only a writer needs

    if not filelock.has_fcntl:  # pragma: no cover - Windows
        yield
        return
    path = lock_name(store)
    try:
        created = _make_parent(store.parent)
    except OSError:
        yield
        return
    held: filelock.BaseFileLock | None = None
    try:
        with shielded():
            held = _take(path, store)
        if held is not None:
            remove_stale_partials(store)  # only the lock holder may judge other writers dead
        yield
    finally:
        with shielded():
            if held is not None:
                try:
                    with contextlib.suppress(OSError):
                        path.unlink()  # while still held: a waiter then opens a fresh file
                finally:
                    held.release()
                    held = None  # filelock's finalizers run here, inside the shield
            for d in reversed(created):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only succeeds when empty
