"""The command line run in this process (Typer's CliRunner) or as a child process, and the
contract for a user error: exit code 1, one `ncinspect: error: ` line naming the file, the
output left untouched."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from ncinspect.cli import app

runner = CliRunner()


def cli(*args: str | Path):
    """`ncinspect ARGS` in this process (paths may be `Path`s)."""
    return runner.invoke(app, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones included) with its bytes; {} when root is absent."""
    if not root.exists():
        return {}
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def one_line_error(stderr: str, exit_code: int, path: Path | str, *fragments: str) -> str:
    """Exit code 1 and one `ncinspect: error: ` line naming `path` and every fragment."""
    assert exit_code == 1, (exit_code, stderr)
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("ncinspect: error: "), line
    assert str(path) in line, (str(path), line)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def expect_error(args: list[str | Path], path: Path | str, *fragments: str, out: Path) -> str:
    """Run the CLI; one-line error naming `path`; `out` (file or directory) unchanged."""
    before = snapshot(out)
    res = cli(*args)
    line = one_line_error(res.stderr, res.exit_code, path, *fragments)
    assert snapshot(out) == before, "the output was modified"
    assert res.stdout == ""
    return line


def run_ncinspect(
    args: list[str | Path],
    *,
    preexec: Callable[[], None] | None = None,
    prefix: tuple[str, ...] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`python -m ncinspect ARGS` as a child process: a time limit, limits set by `preexec`, a
    `prefix` such as `unshare -U`."""
    cmd = [*prefix, sys.executable, "-m", "ncinspect", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)
