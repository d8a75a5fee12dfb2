"""The hostile-corpus harness: a crafted file goes through every command that reads it, each in a
child process under an address-space limit and a time limit, and the contract is checked.

The contract, for every attack and command: the expected exit code; no traceback; exactly one
stderr line, `ncinspect: error: ...`, naming the file and the expected fragments; no marker file
(which the attack's code would write) appears; every victim file keeps its bytes; the output folder
holds nothing afterwards (but what `Crafted.plant` put there); the crafted folder is unchanged. An
attack that proves the test can fail also runs once with `--trust-code` and expects its marker to
appear.

Each `tests/hostile/test_<class>.py` module holds one table of `Attack`s (at least three per
class) and calls `check_attack` for each (attack, command) pair; the files are built in the test,
never shipped as blobs.
"""

from __future__ import annotations

import hashlib
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Far above what ncinspect needs for these tiny inputs (about 0.6 GiB of address space with
# torch imported), far below what the bombs ask for (several GiB to hundreds).
MEMORY_LIMIT = 3 << 30
TIME_LIMIT = 90.0
COMMANDS = ("inspect", "extract", "report", "plot")


@dataclass
class Crafted:
    """What an attack's builder made: the path handed to ncinspect and what to watch."""

    target: Path
    markers: list[Path] = field(default_factory=list)  # must never exist
    victims: list[Path] = field(default_factory=list)  # bytes must not change
    extra: dict[str, list[str]] = field(default_factory=dict)  # per-command extra arguments
    # plants entries in the output folder (work/out) before the run, e.g. links at the names
    # ncinspect will write; a refused run must leave that folder as planted
    plant: Callable[[Path], None] | None = None


@dataclass(frozen=True)
class Attack:
    """One crafted input. `build(folder)` writes it into `folder` and says what to watch;
    `commands` are those that read such a file; `fragments` must appear in the error line;
    `trusted_marker`: with --trust-code (on the first command) the marker does appear;
    `succeeds`: commands among `commands` that exit 0 (the file is read, its code is not run:
    say `inspect` describing a file without loading its code); markers and victims are still
    checked."""

    name: str
    build: Callable[[Path], Crafted]
    commands: Sequence[str]
    fragments: Sequence[str] = ()
    exit_code: int = 1
    trusted_marker: bool = False
    succeeds: Sequence[str] = ()  # commands that read the file fine, running nothing (exit 0)

    def __str__(self) -> str:
        return self.name


def cases(attacks: Sequence[Attack]) -> list[tuple[Attack, str]]:
    """(attack, command) pairs for pytest.mark.parametrize, with readable ids."""
    return [(a, c) for a in attacks for c in a.commands]


def case_ids(attacks: Sequence[Attack]) -> list[str]:
    return [f"{a.name}-{c}" for a in attacks for c in a.commands]


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_limited(args: Sequence[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m ncinspect ARGS` in `cwd` under MEMORY_LIMIT and TIME_LIMIT (a hang fails the
    test through subprocess.TimeoutExpired)."""
    cmd = [sys.executable, "-m", "ncinspect", *map(str, args)]
    return subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
        preexec_fn=_limits,
        stdin=subprocess.DEVNULL,
    )


def digits_data(folder: Path, n: int = 12, dim: int = 4, k: int = 3) -> Path:
    """A small valid data file (x: n x dim float32, y: n labels in 0..k-1) for `extract`."""
    rng = np.random.default_rng(0)
    path = folder / "data_test.npz"
    y = np.arange(n) % k
    np.savez(path, x=rng.standard_normal((n, dim)).astype(np.float32), y=y.astype(np.int64))
    return path


def argv(command: str, crafted: Crafted, work: Path) -> list[str]:
    """The command line for `command` on the crafted target; outputs go under work/out."""
    out = work / "out"
    target = str(crafted.target)
    extra = crafted.extra.get(command, [])
    if command == "inspect":
        return ["inspect", target, *extra]
    if command == "extract":
        if "--data" not in extra:
            extra = ["--data", str(digits_data(work)), *extra]
        return ["extract", target, "--out", str(out / "features"), "-q", *extra]
    if command == "report":
        return ["report", target, "--quiet", "-o", str(out / "report.txt"), *extra]
    if command == "plot":
        return ["plot", target, "--out", str(out / "plots"), *extra]
    raise ValueError(command)


def _tree(root: Path) -> dict[str, str]:
    """Every entry under root (links not followed) with a fingerprint of what it is."""
    out: dict[str, str] = {}
    if not root.exists() and not root.is_symlink():
        return out
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = "special"
    return out


def _digest(p: Path) -> str | None:
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        return None


def check_attack(attack: Attack, command: str, tmp: Path) -> None:
    """Build the attack in tmp/crafted, run `command` on it and check the contract."""
    crafted_dir = tmp / "crafted"
    crafted_dir.mkdir()
    work = tmp / "work"
    work.mkdir()
    crafted = attack.build(crafted_dir)
    before = _tree(crafted_dir)
    victims = {v: _digest(v) for v in crafted.victims}
    if crafted.plant is not None:
        crafted.plant(work / "out")
    planted = _tree(work / "out")
    res = run_limited(argv(command, crafted, work), work)
    stderr = res.stderr
    if command in attack.succeeds:
        assert res.returncode == 0 and "Traceback" not in stderr, (res.returncode, stderr)
        _untouched(crafted, victims)
        return
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith("ncinspect: error: "), line
    assert crafted.target.name in line, (crafted.target.name, line)
    for fragment in attack.fragments:
        assert fragment in line, (fragment, line)
    assert res.returncode == attack.exit_code, (res.returncode, line)
    _untouched(crafted, victims)
    assert _tree(work / "out") == planted, f"left in the output: {_tree(work / 'out')}"
    assert _tree(crafted_dir) == before, "the crafted folder changed"


def _untouched(crafted: Crafted, victims: dict[Path, str | None]) -> None:
    for marker in crafted.markers:
        assert not marker.exists(), f"{marker} appeared: the file's code ran"
    for victim, digest in victims.items():
        assert _digest(victim) == digest, f"{victim} was changed"


def check_trusted(attack: Attack, tmp: Path) -> None:
    """With --trust-code the attack's code does run (its marker appears): the refusal above is
    what kept it out, so the test can fail."""
    crafted_dir = tmp / "crafted"
    crafted_dir.mkdir()
    work = tmp / "work"
    work.mkdir()
    crafted = attack.build(crafted_dir)
    command = attack.commands[0]
    run_limited([*argv(command, crafted, work), "--trust-code"], work)
    assert any(m.exists() for m in crafted.markers), "with --trust-code the code should run"
