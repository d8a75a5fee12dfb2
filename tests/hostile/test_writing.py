"""Class 5: writing through links planted in the output folder. Someone who can write into the
folder ncinspect writes to plants symbolic (or hard) links at the names it is about to write: the
store's lock file `.NAME.lock`, the temporary names (which once were `.NAME.partial-PID`, PID
guessable), and the final names. ncinspect never writes, truncates or creates a file through such
a link: temporary files are created new (O_EXCL, unpredictable name), the lock file is opened
without following a link and refused unless it is a plain file of ours, and the final rename
replaces a link at the final name instead of writing into its target."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.hostile.harness import Attack, Crafted, case_ids, cases, check_attack

RUN = "crafted"  # the run name extract derives: the checkpoint's folder (harness: tmp/crafted)
STORE = "epoch_1.pt.test.h5"  # the store name extract derives from the checkpoint and the split
PLOT = "classification_trajectories"  # the plot stem for classification runs
GUESSES = 3000  # PIDs planted past the last one the kernel handed out


def _next_pids() -> range:
    """The PIDs the next processes (the ncinspect child among them) will likely get."""
    try:
        last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    except (OSError, ValueError):
        last = os.getpid()
    return range(last + 1, last + 1 + GUESSES)


def _model(folder: Path) -> Path:
    path = folder / "model.py"
    path.write_text(
        "from torch import nn\n\n\ndef net():\n"
        "    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))\n"
    )
    return path


def _checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    ckpt = folder / "epoch_1.pt"
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    torch.save(net.state_dict(), ckpt)
    return ckpt


def _store(folder: Path) -> Path:
    from ncinspect.io.store.writer import write_store

    rng = np.random.default_rng(0)
    path = folder / "epoch_1.h5"
    write_store(
        path,
        features=rng.standard_normal((12, 4)).astype(np.float32),
        labels=np.arange(12) % 3,
        weight=rng.standard_normal((3, 4)).astype(np.float32),
        bias=np.zeros(3, np.float32),
    )
    return path


def _victim(folder: Path) -> Path:
    victim = folder / "victim.txt"
    victim.write_text("precious bytes of someone else\n")
    return victim


def _links(
    names: Callable[[Path], list[Path]],
    target: Callable[[Path], Path] = _checkpoint,
    *,
    hard: bool = False,
) -> Callable[[Path], Crafted]:
    """An attack: the input `target(folder)`, and links at `names(out)` to a victim file."""

    def build(folder: Path) -> Crafted:
        victim = _victim(folder)
        out = folder.parent / "work" / "out"  # the harness's output folder
        extra = {
            "extract": ["--model", f"{_model(folder)}:net"],
            "inspect": ["-o", str(out / "inspect.txt")],
        }

        def plant(out: Path) -> None:
            for link in names(out):
                link.parent.mkdir(parents=True, exist_ok=True)
                if hard:
                    os.link(victim, link)
                else:
                    link.symlink_to(victim)

        return Crafted(target(folder), victims=[victim], extra=extra, plant=plant)

    return build


def _lock_name(out: Path) -> list[Path]:
    return [out / "features" / RUN / f".{STORE}.lock"]


def _store_partials(out: Path) -> list[Path]:
    return [out / "features" / RUN / f".{STORE}.partial-{pid}" for pid in _next_pids()]


def _store_final(out: Path) -> list[Path]:
    return [out / "features" / RUN / STORE]


def _report_partials(out: Path) -> list[Path]:
    return [out / f".report.txt.partial-{pid}" for pid in _next_pids()]


def _report_final(out: Path) -> list[Path]:
    return [out / "report.txt"]


def _plot_partials(out: Path) -> list[Path]:
    return [
        out / "plots" / f".{PLOT}.{fmt}.partial-{pid}"
        for pid in _next_pids()
        for fmt in ("png", "svg")
    ]


def _plot_final(out: Path) -> list[Path]:
    return [out / "plots" / f"{PLOT}.{fmt}" for fmt in ("png", "svg")]


def _inspect_partials(out: Path) -> list[Path]:
    return [out / f".inspect.txt.partial-{pid}" for pid in _next_pids()]


def _run_folder_link(folder: Path) -> Crafted:
    """The run's folder under --out is a link to someone else's folder, which holds a file at
    the store's name: even --overwrite must not replace it there."""
    victim_dir = folder / "elsewhere"
    victim_dir.mkdir()
    victim = victim_dir / STORE
    victim.write_text("someone else's file\n")
    extra = {"extract": ["--model", f"{_model(folder)}:net", "--overwrite"]}

    def plant(out: Path) -> None:
        (out / "features").mkdir(parents=True)
        (out / "features" / RUN).symlink_to(victim_dir, target_is_directory=True)

    return Crafted(_checkpoint(folder), victims=[victim], extra=extra, plant=plant)


def _overwriting(build: Callable[[Path], Crafted]) -> Callable[[Path], Crafted]:
    def with_overwrite(folder: Path) -> Crafted:
        crafted = build(folder)
        crafted.extra["extract"] = [*crafted.extra["extract"], "--overwrite"]
        return crafted

    return with_overwrite


ATTACKS = [
    Attack(  # the lock name needs no guess; refused, the victim neither truncated nor written
        "lock-symlink",
        _links(_lock_name),
        ("extract",),
        ("is a symbolic link", "remove it"),
    ),
    Attack(  # a hard link is no link to O_NOFOLLOW: the PID written into it truncated the victim
        "lock-hardlink",
        _links(_lock_name, hard=True),
        ("extract",),
        ("lock file", "has 2 names", "remove it"),
    ),
    Attack(  # the store is written under an unpredictable new name; the links are left alone
        "store-partial-symlinks",
        _links(_store_partials),
        ("extract",),
        succeeds=("extract",),
    ),
    Attack(  # a link at the store's own name counts as an existing output
        "store-final-symlink",
        _links(_store_final),
        ("extract",),
        ("exists but is not a complete feature store", "--overwrite"),
    ),
    Attack(  # the run folder ncinspect derives under --out is a planted link: refused
        "run-folder-symlink",
        _run_folder_link,
        ("extract",),
        ("is a symbolic link inside --out", "never through a link"),
    ),
    Attack(  # with --overwrite the link is replaced by the store, its target never written
        "store-final-symlink-overwrite",
        _overwriting(_links(_store_final)),
        ("extract",),
        succeeds=("extract",),
    ),
    Attack(
        "report-partial-symlinks",
        _links(_report_partials, _store),
        ("report",),
        succeeds=("report",),
    ),
    Attack(  # -o names the file: a link there is replaced by the report, never written through
        "report-final-symlink",
        _links(_report_final, _store),
        ("report",),
        succeeds=("report",),
    ),
    Attack(  # `inspect -o` writes its text like `report -o`
        "inspect-output-partial-symlinks",
        _links(_inspect_partials),
        ("inspect",),
        succeeds=("inspect",),
    ),
    Attack(
        "plot-partial-symlinks",
        _links(_plot_partials, _store),
        ("plot",),
        succeeds=("plot",),
    ),
    Attack(  # plot names are derived inside --out: links there are replaced, never followed
        "plot-final-symlinks",
        _links(_plot_final, _store),
        ("plot",),
        succeeds=("plot",),
    ),
]


def _written(out: Path, attack: Attack) -> list[Path]:
    """The files a succeeding attack's command must have written (as plain files)."""
    if attack.name.startswith("store"):
        return [out / "features" / RUN / STORE]
    if attack.name.startswith("report"):
        return [out / "report.txt"]
    if attack.name.startswith("inspect"):
        return [out / "inspect.txt"]
    return [out / "plots" / f"{PLOT}.{fmt}" for fmt in ("png", "svg")]


@pytest.mark.parametrize(("attack", "command"), cases(ATTACKS), ids=case_ids(ATTACKS))
def test_no_write_through_a_planted_link(attack: Attack, command: str, tmp_path: Path) -> None:
    check_attack(attack, command, tmp_path)
    out = tmp_path / "work" / "out"
    if command in attack.succeeds:
        for path in _written(out, attack):
            assert path.is_file() and not path.is_symlink(), path
            assert path.stat().st_size > 0 and path.stat().st_mode & 0o777 != 0o600, path
        temporaries = [p for p in out.rglob(".*.partial-*") if not p.is_symlink()]
        assert temporaries == [], temporaries  # only the planted links are left
