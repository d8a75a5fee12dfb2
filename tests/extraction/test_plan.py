"""Run names under --out (`extraction.plan.run_names`): folders of one name stay apart, generic
checkpoint folders are named after the run above them, and no level of a run folder may be a
planted link."""

from __future__ import annotations

from pathlib import Path

import pytest

from ncinspect.errors import OutputError
from ncinspect.extraction.plan import _check_run_folder, run_names


def test_folders_of_one_name_are_named_by_their_path_from_the_common_root() -> None:
    a, b, c = Path("/x/runs/seed0/ce"), Path("/x/runs/seed1/ce"), Path("/x/runs/seed0/ls")
    assert run_names([a, b, c]) == {a: "seed0/ce", b: "seed1/ce", c: "ls"}
    deep = Path("/x/other/seed0/ce")
    assert run_names([a, deep]) == {a: "runs/seed0/ce", deep: "other/seed0/ce"}
    assert run_names([a, a]) == {a: "ce"}  # one folder given twice is one run


def test_generic_checkpoint_folders_take_the_run_folder_name() -> None:
    v0 = Path("/logs/lightning_logs/version_0/checkpoints")
    v1 = Path("/logs/lightning_logs/version_1/checkpoints")
    assert run_names([v0, v1]) == {v0: "version_0", v1: "version_1"}
    s0, s1 = Path("/r/seed0/ce/ckpts"), Path("/r/seed1/ce/ckpts")
    assert run_names([s0, s1]) == {s0: "seed0/ce", s1: "seed1/ce"}
    assert run_names([Path("/checkpoints")]) == {Path("/checkpoints"): "checkpoints"}


def test_a_link_at_any_level_of_a_run_folder_is_refused(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "seed0").symlink_to(elsewhere)
    with pytest.raises(OutputError, match="is a symbolic link inside --out"):
        _check_run_folder(out, "seed0/ce", Path("ckpt.pt"))
    _check_run_folder(out, "seed1/ce", Path("ckpt.pt"))  # nothing planted: fine
