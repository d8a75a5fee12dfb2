"""Output files written through `io.atomic`: a new private temporary file under an unpredictable
name, renamed over the destination. Links planted at the names a writer uses (the temporary names
an older ncinspect used, `.NAME.partial-PID`, and the final name) are never followed: stores,
`report -o` / `inspect -o` text and plots alike."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ncinspect.errors import OutputError
from ncinspect.io.atomic import AtomicFile, partial_pid
from ncinspect.io.store.writer import write_store

PRECIOUS = "precious bytes of someone else\n"


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text(PRECIOUS)
    return victim


def _plant_guessable(dest: Path, victim: Path) -> list[Path]:
    """Links at every name an older ncinspect would have written `dest` under in this process."""
    links = [dest.with_name(f".{dest.name}.partial-{os.getpid()}")]
    for link in links:
        link.symlink_to(victim)
    return links


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_partial_names_carry_the_writers_pid() -> None:
    dest = Path("out/a.h5")
    assert partial_pid(".a.h5.partial-k3_9zq0a-4242", dest) == 4242
    assert partial_pid(".a.h5.partial-4242", dest) == 4242  # an older ncinspect's name
    for other in (".a.h5.partial-", ".a.h5.partial-x-1", ".b.h5.partial-12", "a.h5.partial-12"):
        assert partial_pid(other, dest) is None, other


def test_atomic_file_is_new_private_and_renamed_over_a_planted_link(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    dest = tmp_path / "report.txt"
    links = _plant_guessable(dest, victim)
    dest.symlink_to(victim)  # the final name too
    with AtomicFile(dest) as tmp:
        assert tmp.fd is not None and tmp.path.parent == tmp_path
        assert tmp.path not in links and partial_pid(tmp.path.name, dest) == os.getpid()
        assert tmp.path.stat().st_mode & 0o777 == 0o600  # private while being written
        with open(tmp.opener_path(), "w") as fh:  # by name, as h5py opens it
            fh.write("new text\n")
        tmp.commit()
    assert not dest.is_symlink() and dest.read_text() == "new text\n"
    assert dest.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert victim.read_text() == PRECIOUS and all(link.is_symlink() for link in links)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["report.txt", "victim.txt", *(link.name for link in links)]
    )


def test_atomic_file_is_removed_on_failure_but_never_a_file_put_in_its_place(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), AtomicFile(dest) as tmp:
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    victim = _victim(tmp_path)
    with pytest.raises(OutputError, match="was replaced or removed while being written"):
        with AtomicFile(dest) as tmp:
            tmp.path.unlink()
            tmp.path.symlink_to(victim)  # someone swapped the name for a link
            tmp.commit()
    assert tmp.path.is_symlink() and not dest.exists()  # left alone, not renamed, not removed
    assert victim.read_text() == PRECIOUS


def _store(path: Path, overwrite: bool = False) -> Path:
    rng = np.random.default_rng(0)
    return write_store(
        path,
        features=rng.standard_normal((6, 4)).astype(np.float32),
        labels=np.arange(6) % 3,
        weight=rng.standard_normal((3, 4)).astype(np.float32),
        overwrite=overwrite,
    )


def test_store_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    """Links at the guessable temporary name are left alone; a link at the store's own name is
    refused without --overwrite (even dangling) and replaced with it, its target never written."""
    victim = _victim(tmp_path)
    store = tmp_path / "a.h5"
    links = _plant_guessable(store, victim)
    _store(store)
    assert victim.read_text() == PRECIOUS and all(link.is_symlink() for link in links)
    store.unlink()
    for target in (victim, tmp_path / "absent"):
        store.symlink_to(target)
        with pytest.raises(OutputError, match="output is a symbolic link; pass --overwrite"):
            _store(store)
        assert store.is_symlink() and not (tmp_path / "absent").exists()
        store.unlink()
    store.symlink_to(victim)
    _store(store, overwrite=True)
    assert not store.is_symlink() and store.stat().st_size > 0
    assert victim.read_text() == PRECIOUS
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".a.h5.partial-")] == links


def test_report_output_and_plots_never_write_through_a_planted_link(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from ncinspect.cli.common import write_output
    from ncinspect.render.plots import save_figure

    victim = _victim(tmp_path)
    report = tmp_path / "report.txt"
    links = _plant_guessable(report, victim)
    report.symlink_to(victim)  # named with -o: the link is replaced, its target kept
    write_output("table", report)
    assert report.read_text() == "table\n" and not report.is_symlink()
    plots = tmp_path / "plots"
    plots.mkdir()
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    for fmt in ("png", "svg"):
        links += _plant_guessable(plots / f"curve.{fmt}", victim)
    (plots / "curve.svg").symlink_to(victim)
    written = save_figure(fig, plots, "curve", ["png", "svg"])
    assert all(p.is_file() and not p.is_symlink() and p.stat().st_size for p in written)
    assert victim.read_text() == PRECIOUS and all(link.is_symlink() for link in links)
