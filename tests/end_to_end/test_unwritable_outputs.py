"""Outputs that cannot be written, through the command line: a parent that is a file,
a path that is a directory, a read-only folder, a full disk. Each is one error line naming the
path, and nothing is left behind: no store, no partial file, no lock, an old report unchanged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.helpers.cli import expect_error, one_line_error, run_ncinspect, snapshot
from tests.helpers.kit import Kit


def test_output_parent_is_a_file(kit: Kit, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file\n")
    out = blocker / "features"
    expect_error(kit.extract(kit.checkpoints["pt"], out), blocker, "is a file", out=blocker)
    report = blocker / "r.json"
    expect_error(["report", kit.dumps["h5"], "-o", report], report, out=blocker)


def test_output_path_is_a_directory(kit: Kit, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    (report / "inside").mkdir(parents=True)
    expect_error(["report", kit.dumps["h5"], "-o", report], report, "is a directory", out=report)
    out = tmp_path / "features"
    run = kit.checkpoints["pt"].parent.name
    store_dir = out / run / f"{kit.checkpoints['pt'].name}.test.h5"
    (store_dir / "x").mkdir(parents=True)
    expect_error(kit.extract(kit.checkpoints["pt"], out), store_dir, "is a directory", out=out)


def test_read_only_output_directory(kit: Kit, tmp_path: Path) -> None:
    """As root, `unshare -U` drops the capability that ignores permissions (no skipping)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "keep.txt").write_text("keep\n")
    ro.chmod(0o555)
    prefix = ("unshare", "-U") if os.geteuid() == 0 else ()
    try:
        before = snapshot(ro)
        res = run_ncinspect(["report", kit.dumps["h5"], "-o", ro / "r.json"], prefix=prefix)
        one_line_error(res.stderr, res.returncode, ro / "r.json", "cannot write")
        res = run_ncinspect(kit.extract(kit.checkpoints["pt"], ro / "features"), prefix=prefix)
        one_line_error(res.stderr, res.returncode, ro / "features", "cannot create directory")
        assert snapshot(ro) == before and sorted(p.name for p in ro.iterdir()) == ["keep.txt"]
    finally:
        ro.chmod(0o755)


def _small_file_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_leaves_no_partial_store(kit: Kit, tmp_path: Path) -> None:
    data = tmp_path / "big_test.npz"
    rng = np.random.default_rng(8)
    np.savez(data, x=rng.standard_normal((20000, 6)).astype(np.float32), y=np.arange(20000) % 3)
    out = tmp_path / "features"
    res = run_ncinspect(
        kit.extract(kit.checkpoints["pt"], out, data=data), preexec=_small_file_limit(64 << 10)
    )
    store = out / kit.checkpoints["pt"].parent.name / f"{kit.checkpoints['pt'].name}.test.h5"
    one_line_error(res.stderr, res.returncode, store, "File too large")
    assert snapshot(out) == {}, snapshot(out).keys()  # no store, no partial, no lock
    # report -o under the same limit: the old report stays as it was
    report = tmp_path / "r.json"
    report.write_text("old\n")
    res = run_ncinspect(
        ["report", kit.dumps["h5"], "-f", "json", "-o", report], preexec=_small_file_limit(100)
    )
    one_line_error(res.stderr, res.returncode, report, "File too large")
    assert report.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


FILL_DISK = """
import os, resource, signal, sys
import numpy as np
from ncinspect.errors import OutputError
from ncinspect.io.store.writer import write_store

root = sys.argv[1]
rows = np.random.default_rng(0).standard_normal((5000, 8)).astype(np.float32)
kw = dict(features=rows, labels=np.arange(5000) % 3, weight=np.ones((3, 8)), outputs=rows[:, :3])
size = os.path.getsize(write_store(os.path.join(root, "full", "s.h5"), **kw))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
for limit in (4096, 65536, size // 2, size - 4096, size - 100, size - 1):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    out = os.path.join(root, f"limit{limit}", "s.h5")
    try:
        write_store(out, **kw)
    except OutputError as exc:
        assert "writing failed: File too large" in str(exc) and "\\n" not in str(exc), str(exc)
    else:
        raise AssertionError(f"limit {limit} of {size}: no error")
    assert os.listdir(os.path.dirname(out)) == [], os.listdir(os.path.dirname(out))
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
print("ok")
"""


def test_disk_full_at_any_point_of_a_store_write(tmp_path: Path) -> None:
    """Data writes and the final metadata flush both fail cleanly (no crash at close or exit)."""
    res = subprocess.run(
        [sys.executable, "-c", FILL_DISK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and res.stdout == "ok\n", (res.returncode, res.stderr[-2000:])
    assert res.stderr == ""
