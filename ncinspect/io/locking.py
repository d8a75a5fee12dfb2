"""One writer per output store: an advisory lock beside it, and clean-up of dead writers' files.

Owns: `store_lock(path)`, a context manager held while one store is checked and written, and the
removal of temporary `.NAME.partial-PID` files whose process no longer runs (left behind by a
SIGKILL, a power cut or an out-of-memory kill). Knows nothing of HDF5 or models; never blocks.

The lock is `fcntl.flock` on `.NAME.lock` in the store's directory, taken without waiting: a
second `ncinspect extract` writing the same store is refused with an `OutputError` naming the
holder's PID. The kernel releases the lock when its holder exits, however it exits, so a killed
run never leaves a stale lock. On platforms without `fcntl` (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ncinspect.errors import OutputError

try:  # pragma: no cover - fcntl is absent on Windows only
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


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
    """Temporary files of this store (`.NAME.partial-PID`) whose writing process is gone."""
    prefix = f".{store.name}.partial-"
    try:
        entries = list(store.parent.iterdir())
    except OSError:
        return []
    stale: list[Path] = []
    for p in entries:
        if not p.name.startswith(prefix):
            continue
        pid_text = p.name[len(prefix) :]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid != os.getpid() and not pid_alive(pid):
            stale.append(p)
    return sorted(stale)


def remove_stale_partials(store: Path) -> list[Path]:
    """Delete the dead writers' temporary files of this store; return what was removed."""
    removed: list[Path] = []
    for p in stale_partials(store):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _make_parent(parent: Path) -> list[Path]:
    """Create the missing directories above a store; return them (deepest last)."""
    missing = [p for p in [parent, *parent.parents] if not p.exists()]
    missing.reverse()
    parent.mkdir(parents=True, exist_ok=True)
    return missing


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold the lock of one output store; refuse at once when another process holds it.

    When the lock file cannot be created (an unwritable directory, a parent that is a file) no
    lock is taken and the caller's own write reports the problem, so the error names the store.
    Directories created only for the lock are removed again if nothing was written into them.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = lock_name(store)
    try:
        created = _make_parent(store.parent)
    except OSError:
        yield
        return
    fd: int | None = None
    try:
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                fd = None
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                fd = None
                raise OutputError(
                    f"another ncinspect extract (pid {holder}) is writing this store; wait for it "
                    "or choose another --out",
                    path=store,
                ) from None
            # The previous holder may have unlinked the file between our open and our lock:
            # then we hold a lock nobody else can see. Retry on the file now at that name.
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
            fd = None
        if fd is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            remove_stale_partials(store)  # only the lock holder may judge other writers dead
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()  # only succeeds when empty
