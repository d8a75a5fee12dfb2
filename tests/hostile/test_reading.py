"""Hostile corpus, class 4: reading outside the given paths.

HDF5 files that point elsewhere (an external link, a soft link leading out through one, external
raw storage on /dev/zero, a virtual dataset over a victim file), a FIFO handed over as a
checkpoint, store or data file, and run folders whose entries link out of them. Each goes through
every command that reads such a file; nothing outside the given paths is read, nothing hangs.
`inspect` describes an HDF5 file it refuses to read (exit 0, a note) and lists a folder without
the entries that leave it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ncinspect.io.store.writer import write_store
from tests.helpers.models import make_model, write_model_file
from tests.hostile.harness import (
    Attack,
    Crafted,
    case_ids,
    cases,
    check_attack,
    digits_data,
    run_limited,
)

HUGE = 1 << 40
ZERO = [("/dev/zero", 0, h5py.h5f.UNLIMITED)]  # external storage reading /dev/zero forever


def _store(path: Path) -> Path:
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 3
    return write_store(
        path,
        features=rng.standard_normal((12, 4)).astype(np.float32),
        labels=labels,
        weight=rng.standard_normal((3, 4)).astype(np.float32),
    )


def _victim(folder: Path) -> Path:
    """A valid store outside the crafted file, whose bytes must not be read into a result."""
    outside = folder / "outside"
    outside.mkdir()
    return _store(outside / "victim.h5")


def external_link(folder: Path) -> Crafted:
    victim = _victim(folder)
    target = _store(folder / "linked.h5")
    with h5py.File(target, "a") as f:
        del f["features"]
        f["features"] = h5py.ExternalLink(str(victim), "/features")
    return Crafted(target, victims=[victim])


def soft_link_out(folder: Path) -> Crafted:
    victim = _victim(folder)
    target = _store(folder / "soft.h5")
    with h5py.File(target, "a") as f:
        del f["features"]
        f["elsewhere"] = h5py.ExternalLink(str(victim), "/")
        f["features"] = h5py.SoftLink("/elsewhere/features")
    return Crafted(target, victims=[victim])


def external_dev_zero(folder: Path) -> Crafted:
    target = _store(folder / "zero.h5")
    with h5py.File(target, "a") as f:
        del f["features"], f["labels"]
        f.create_dataset("features", (HUGE, 4), "f4", external=ZERO)
        f.create_dataset("labels", (HUGE,), "i8", external=ZERO)
    return Crafted(target)


def virtual_from_victim(folder: Path) -> Crafted:
    victim = _victim(folder)
    target = _store(folder / "virtual.h5")
    with h5py.File(target, "a") as f:
        del f["features"]
        layout = h5py.VirtualLayout((12, 4), "f4")
        layout[:] = h5py.VirtualSource(str(victim), "features", (12, 4))
        f.create_virtual_dataset("features", layout)
    return Crafted(target, victims=[victim])


def fifo(name: str):
    def build(folder: Path) -> Crafted:
        target = folder / name
        os.mkfifo(target)
        return Crafted(target)

    return build


def run_linking_out(folder: Path) -> Crafted:
    """A run folder whose checkpoint and store are links to files outside it."""
    outside = folder / "outside"
    outside.mkdir()
    model = make_model_file_module(outside)
    torch.save(model.state_dict(), outside / "secret.pt")
    _store(outside / "secret.h5")
    run = folder / "run"
    run.mkdir()
    (run / "epoch_1.pt").symlink_to(outside / "secret.pt")
    (run / "epoch_1.pt.test.h5").symlink_to(outside / "secret.h5")
    return Crafted(run, victims=[outside / "secret.pt", outside / "secret.h5"])


def make_model_file_module(folder: Path) -> torch.nn.Module:
    import importlib.util

    path = write_model_file(folder / "code", stem="hostile_tiny")
    spec = importlib.util.spec_from_file_location("hostile_tiny", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["hostile_tiny"] = module
    spec.loader.exec_module(module)
    return make_model(module)


STORE_COMMANDS = ("inspect", "report", "plot")
ATTACKS = [
    Attack("hdf5-external-link", external_link, STORE_COMMANDS, ("external link",),
           succeeds=("inspect",)),
    Attack("hdf5-soft-link-out", soft_link_out, STORE_COMMANDS, ("self-contained",),
           succeeds=("inspect",)),
    Attack("hdf5-external-dev-zero", external_dev_zero, STORE_COMMANDS, ("external storage",),
           succeeds=("inspect",)),
    Attack("hdf5-virtual-victim", virtual_from_victim, STORE_COMMANDS, ("virtual storage",),
           succeeds=("inspect",)),
    Attack("fifo-checkpoint", fifo("epoch_1.pt"), ("inspect", "extract"), ("FIFO",)),
    Attack("fifo-store", fifo("s.h5"), ("inspect", "report", "plot"), ("FIFO",)),
    Attack("run-linking-out", run_linking_out, ("inspect", "extract", "report", "plot"),
           ("holds no",), succeeds=("inspect",)),
]  # fmt: skip


@pytest.mark.parametrize(("attack", "command"), cases(ATTACKS), ids=case_ids(ATTACKS))
def test_reading_outside_refused(attack: Attack, command: str, tmp_path: Path) -> None:
    check_attack(attack, command, tmp_path)


def check_data_attack(build, fragments: tuple[str, ...], tmp: Path) -> None:
    """`extract` with a valid checkpoint and the crafted file (or folder) as --data: one error
    line naming it, nothing written, victims unchanged."""
    crafted_dir, work, code = tmp / "crafted", tmp / "work", tmp / "code"
    crafted_dir.mkdir()
    work.mkdir()
    crafted: Crafted = build(crafted_dir)
    model_file = write_model_file(code, stem="hostile_data_tiny")
    ckpt = tmp / "ckpt" / "epoch_1.pt"
    ckpt.parent.mkdir()
    import importlib.util

    spec = importlib.util.spec_from_file_location("hostile_data_tiny", model_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(make_model(module).state_dict(), ckpt)
    victims = {v: v.read_bytes() for v in crafted.victims}
    out = work / "out"
    res = run_limited(
        ["extract", ckpt, "--data", crafted.target, "--model", f"{model_file}:tiny", "--out",
         out, "-q"],
        work,
    )  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    assert lines[0].startswith("ncinspect: error: ") and res.returncode == 1, res.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))
    assert {v: v.read_bytes() for v in crafted.victims} == victims


def _data_external_link(folder: Path) -> Crafted:
    victim = digits_data(folder)
    target = folder / "linked_test.h5"
    with h5py.File(target, "w") as f:
        f["x"] = h5py.ExternalLink(str(victim), "/x")
        f["y"] = np.arange(12) % 3
    return Crafted(target, victims=[victim])


def _data_dev_zero(folder: Path) -> Crafted:
    target = folder / "zero_test.h5"
    with h5py.File(target, "w") as f:
        f.create_dataset("x", (HUGE, 4), "f4", external=ZERO)
        f["y"] = np.arange(12) % 3
    return Crafted(target)


def _data_fifo(folder: Path) -> Crafted:
    return fifo("data_test.npz")(folder)


@pytest.mark.parametrize(
    ("build", "fragments"),
    [
        (_data_external_link, ("linked_test.h5", "external link")),
        (_data_dev_zero, ("zero_test.h5", "external storage")),
        (_data_fifo, ("data_test.npz", "FIFO")),
    ],
    ids=["external-link", "dev-zero", "fifo"],
)
def test_data_file_reading_outside_refused(build, fragments: tuple[str, ...], tmp_path: Path):
    check_data_attack(build, fragments, tmp_path)
