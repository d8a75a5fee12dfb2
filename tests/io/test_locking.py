"""One writer per store (`io.locking`): the lock is exclusive and released, a killed holder's lock
is free, dead writers' partial files are removed, and a planted symlink is never followed."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ncinspect.errors import NcInspectError, OutputError
from ncinspect.io.locking import lock_name, stale_partials, store_lock


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    store = tmp_path / "out" / "run" / "a.pt.test.h5"
    with store_lock(store):
        assert lock_name(store).read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputError, match=rf"another ncinspect extract \(pid {os.getpid()}\)"):
            with store_lock(store):
                pass
    assert not lock_name(store).exists()
    assert not (tmp_path / "out").exists()  # directories made only for the lock are removed
    with store_lock(store):  # free again
        pass
    # an error inside the block releases the lock too
    with pytest.raises(NcInspectError):
        with store_lock(store):
            raise NcInspectError("boom")
    with store_lock(store):
        pass


def test_lock_of_a_killed_holder_is_free(tmp_path: Path) -> None:
    store = tmp_path / "s.h5"
    code = (
        "import sys, time; from pathlib import Path; from ncinspect.io.locking import store_lock\n"
        f"with store_lock(Path({str(store)!r})):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=rf"\(pid {holder.pid}\)"):
            with store_lock(store):
                pass
    finally:
        holder.kill()
        holder.wait()
    with store_lock(store):  # the kernel released the dead holder's lock
        pass


def test_stale_partials_of_dead_writers_are_removed(tmp_path: Path) -> None:
    store = tmp_path / "s.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".s.h5.partial-{dead.pid}"
        live = tmp_path / f".s.h5.partial-{alive.pid}"
        other = tmp_path / f".t.h5.partial-{dead.pid}"  # another store's: not ours to judge
        for p in (stale, live, other):
            p.write_bytes(b"half a store")
        assert stale_partials(store) == [stale]
        with store_lock(store):
            pass
        assert not stale.exists() and live.exists() and other.exists()
    finally:
        alive.kill()
        alive.wait()


def test_store_lock_never_follows_a_planted_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symlink at `.NAME.lock` (to a file of the victim's, or to a name that does not exist) is
    refused: the target is neither created, truncated nor written, and no store is written. Also
    when the link appears after the check (filelock opens with O_NOFOLLOW)."""
    from ncinspect.io.locking import lock_name, store_lock

    store = tmp_path / "s.h5"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    absent = tmp_path / "created-through-the-link"
    for check_races in (False, True):
        for target in (victim, absent):
            lock_name(store).symlink_to(target)
            with monkeypatch.context() as m:
                if check_races:  # the link is planted after store_lock looked
                    m.setattr(Path, "is_symlink", lambda self: False)
                with pytest.raises(OutputError, match="is a symbolic link") as err:
                    with store_lock(store):
                        raise AssertionError("the lock was taken through a symlink")
            assert str(err.value).startswith(str(store))
            assert victim.read_text() == "precious\n" and not absent.exists()
            assert lock_name(store).is_symlink() and not store.exists()
            lock_name(store).unlink()
    with store_lock(store):  # without the link the lock is taken as usual
        assert lock_name(store).read_text().strip().isdigit()


@pytest.mark.parametrize("moment", ["taking", "removing", "finalizing"])
def test_an_interrupt_while_the_lock_is_taken_or_given_back_leaves_no_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """Ctrl-C at the worst moment, deterministically: the CLI's handler runs once filelock holds
    the lock (in the callback that writes the PID), just before the lock file is removed, or in
    filelock's finalizer of the released lock. The interrupt is raised once the lock is held, or
    released and its file removed (not half-way, not dropped), and no lock file is left (one was,
    in the SIGINT/SIGTERM test of tests/extraction/test_interrupt.py, when a signal came late)."""
    import filelock

    from ncinspect import errors
    from ncinspect.cli.app import _interrupt
    from ncinspect.io import locking

    monkeypatch.setattr(errors, "_pending", None)
    store = tmp_path / "s.h5"
    fired: list[bool] = []

    def signal_arrives() -> None:
        if not fired:
            fired.append(True)
            _interrupt(signal.SIGINT, None)  # what Python runs when SIGINT arrives here

    if moment == "taking":
        write_pid = locking._write_pid

        def writes_pid(fd: int) -> None:
            write_pid(fd)
            signal_arrives()

        monkeypatch.setattr(locking, "_write_pid", writes_pid)
    elif moment == "removing":
        unlink = Path.unlink

        def unlinks(self: Path, missing_ok: bool = False) -> None:
            if self == lock_name(store):
                signal_arrives()
            unlink(self, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", unlinks)
    else:
        finalize = filelock.BaseFileLock.__del__

        def finalizes(self: filelock.BaseFileLock) -> None:
            signal_arrives()
            finalize(self)

        monkeypatch.setattr(filelock.BaseFileLock, "__del__", finalizes)
    dropped: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    ran: list[bool] = []
    with pytest.raises(KeyboardInterrupt):
        with store_lock(store):
            ran.append(True)
    assert fired and not dropped
    assert ran == ([] if moment == "taking" else [True])
    assert not lock_name(store).exists()
    with store_lock(store):  # and it is free
        pass
    assert not lock_name(store).exists()


def test_stale_partials_are_plain_files_of_dead_writers_never_links(tmp_path: Path) -> None:
    """Today's temporary names (`.NAME.partial-RANDOM-PID`) and an older ncinspect's
    (`.NAME.partial-PID`) of a dead writer are removed; a live writer's file, another store's, and
    a link planted at a stale name are left as they are (the link neither followed nor removed)."""
    store = tmp_path / "s.h5"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [
            tmp_path / f".s.h5.partial-abc_1234-{dead.pid}",
            tmp_path / f".s.h5.partial-{dead.pid}",
        ]
        kept = [
            tmp_path / f".s.h5.partial-abc_1234-{alive.pid}",  # a live writer's
            tmp_path / f".s.h5.partial-x.partial-abc_1234-{dead.pid}",  # store `s.h5.partial-x`'s
            tmp_path / f".s.h5.partial-ABC-1234-{dead.pid}",  # not a name ncinspect makes
        ]
        for p in stale + kept:
            p.write_bytes(b"half a store")
        link = tmp_path / f".s.h5.partial-zzz_9999-{dead.pid}"
        link.symlink_to(victim)
        assert stale_partials(store) == sorted(stale)
        with store_lock(store):
            pass
        assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
        assert link.is_symlink() and victim.read_text() == "precious\n"
    finally:
        alive.kill()
        alive.wait()


def test_store_lock_never_writes_a_planted_hard_link_or_foreign_file(tmp_path: Path) -> None:
    """A hard link at `.NAME.lock` is no symbolic link (O_NOFOLLOW opens it): writing the PID
    into it would truncate the victim. It is refused, unwritten, and so is anything that is not a
    regular file (a FIFO); once removed, the lock is taken as usual."""
    store = tmp_path / "s.h5"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.link(victim, lock_name(store))
    with pytest.raises(OutputError, match=r"has 2 names \(a hard link\).*remove it") as err:
        with store_lock(store):
            raise AssertionError("the lock was taken on a hard link")
    assert str(err.value).startswith(str(store))
    assert victim.read_text() == "precious\n" and victim.stat().st_nlink == 2
    lock_name(store).unlink()
    os.mkfifo(lock_name(store))
    with pytest.raises(OutputError, match="not a regular file|cannot be used"):
        with store_lock(store):
            raise AssertionError("the lock was taken on a FIFO")
    assert stat.S_ISFIFO(lock_name(store).lstat().st_mode)
    lock_name(store).unlink()
    with store_lock(store):
        assert lock_name(store).read_text() == f"{os.getpid()}\n"
