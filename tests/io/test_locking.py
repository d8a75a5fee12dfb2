"""One writer per store (`io.locking`): the lock is exclusive and released, a killed holder's lock
is free, dead writers' partial files are removed, and a planted symlink is never followed."""

from __future__ import annotations

import os
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
