"""What the readers agree to open: regular files only, and directory walks that stay inside the
directory (`io.sniff.regular_file`, `io.sniff.inside`, `io.discovery.discover`,
`extraction.checkpoint.list_checkpoints`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ncinspect.errors import InputError, StoreError
from ncinspect.extraction.checkpoint import list_checkpoints
from ncinspect.files import inside, regular_file
from ncinspect.io.discovery import discover, open_source
from ncinspect.io.sniff import sniff
from ncinspect.io.store.reader import open_store
from ncinspect.io.store.writer import write_store


def _store(path: Path) -> Path:
    return write_store(path, features=np.ones((4, 2)), labels=np.arange(4) % 2, weight=np.eye(2))


def test_special_files_are_refused_before_opening(tmp_path: Path) -> None:
    fifo = tmp_path / "s.h5"
    os.mkfifo(fifo)  # opening it would block until a writer came
    for call in (sniff, regular_file, open_source):
        with pytest.raises(InputError, match="FIFO"):
            call(fifo)
    with pytest.raises(StoreError, match="FIFO"):
        open_store(fifo)
    with pytest.raises(InputError, match="character device"):
        regular_file("/dev/zero")
    with pytest.raises(InputError, match="a directory"):
        regular_file(tmp_path)


def test_an_explicit_symlink_is_followed(tmp_path: Path) -> None:
    real = _store(tmp_path / "elsewhere" / "real.h5")
    link = tmp_path / "run" / "link.h5"
    link.parent.mkdir()
    link.symlink_to(real)
    assert discover([link]).files == [link]
    open_source(link).close()


def test_walks_stay_inside_the_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _store(outside / "secret.h5")
    torch.save({"w": torch.zeros(2)}, outside / "secret.pt")
    run = tmp_path / "run"
    kept = _store(run / "a.h5")
    (run / "b.h5").symlink_to(kept)  # a link inside the folder: taken
    (run / "c.h5").symlink_to(outside / "secret.h5")  # leaves it: skipped
    (run / "sub").symlink_to(outside, target_is_directory=True)  # a linked folder: not entered
    (run / "dangling.h5").symlink_to(tmp_path / "missing.h5")
    os.mkfifo(run / "d.h5")
    (run / "epoch_1.pt").symlink_to(outside / "secret.pt")
    os.mkfifo(run / "epoch_2.pt")
    found = discover([run])
    assert found.files == [run / "a.h5", run / "b.h5"]
    assert sum("skipped" in s for s in found.skipped) == 5  # c, dangling, d, epoch_1, epoch_2
    assert list_checkpoints(run) == []
    assert inside(run, run / "b.h5") and not inside(run, run / "c.h5")


def test_deeply_nested_groups_are_refused_before_the_walk_costs_time(tmp_path: Path) -> None:
    """800 nested groups fit in about 100 KB (libver latest); checking them object by object
    by path took over 10 s (quadratic). Stores and data files alike are refused at depth 32,
    before any deeper object is opened."""
    import time

    import h5py

    from ncinspect.errors import DataError
    from ncinspect.extraction.arrays import array_members
    from ncinspect.io.store.checks import MAX_DEPTH

    store = _store(tmp_path / "deep.h5")
    data = tmp_path / "deep_test.h5"
    with h5py.File(data, "w") as f:
        f["x"], f["y"] = np.zeros((4, 2), np.float32), np.arange(4)
    for path in (store, data):
        with h5py.File(path, "a", libver="latest") as f:
            g = f
            for _ in range(800):
                g = g.create_group("g")
    start = time.perf_counter()
    with pytest.raises(StoreError, match=f"nested more than {MAX_DEPTH} groups deep"):
        open_store(store)
    with pytest.raises(DataError, match=f"nested more than {MAX_DEPTH} groups deep"):
        array_members(data)
    assert time.perf_counter() - start < 5
