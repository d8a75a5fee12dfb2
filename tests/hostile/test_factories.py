"""Class 1: model factories named by files. A config beside a checkpoint (run.json, config.json,
args.json) or a config stored in a weights-only checkpoint names an installed function, a frozen
standard-library one, or a file of the folder, with arguments from the file. Without
--trust-code nothing is imported or called; `inspect` describes the file and says so."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.hostile.harness import Attack, Crafted, case_ids, cases, check_attack, check_trusted


def _weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(4, 3).state_dict()


def _config_beside(name: str, config: dict) -> Callable[[Path], Crafted]:
    def build(folder: Path) -> Crafted:
        marker = folder.parent / "pwned"
        text = json.dumps(config).replace("MARKER", str(marker)).replace("FOLDER", str(folder))
        run = folder / "run1"
        run.mkdir()
        (run / name).write_text(text)
        ckpt = run / "epoch_3.pt"
        torch.save(_weights(), ckpt)
        evil = folder / "evil.py"
        evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef net(**kw):\n    pass\n")
        return Crafted(ckpt, markers=[marker])

    return build


def _config_inside(folder: Path) -> Crafted:
    """A weights-only wrapper dict whose stored config names os.system with a shell command."""
    marker = folder.parent / "pwned"
    ckpt = folder / "epoch_7.pt"
    config = {"model": "os:system", "model_args": {"command": f"touch {marker}"}}
    torch.save({"state_dict": _weights(), "config": config}, ckpt)
    return Crafted(ckpt, markers=[marker])


ATTACKS = [
    Attack(
        "run-json-subprocess",
        _config_beside(
            "run.json",
            {"model": "subprocess:run", "model_args": {"args": ["touch", "MARKER"]}},
        ),
        ("extract", "inspect"),
        ("names the model factory 'subprocess:run'", "--trust-code"),
        trusted_marker=True,
        succeeds=("inspect",),
    ),
    Attack(
        "checkpoint-config-os-system",
        _config_inside,
        ("extract", "inspect"),
        ("names the model factory 'os:system'", "--trust-code"),
        trusted_marker=True,
        succeeds=("inspect",),
    ),
    Attack(
        "config-json-frozen-runpy",  # a frozen/stdlib function that runs a file by its path
        _config_beside(
            "config.json",
            {"model": "runpy:run_path", "model_args": {"path_name": "FOLDER/evil.py"}},
        ),
        ("extract", "inspect"),
        ("names the model factory 'runpy:run_path'", "--trust-code"),
        trusted_marker=True,
        succeeds=("inspect",),
    ),
    Attack(
        "args-json-file-in-folder",  # importing the file runs its top-level code
        _config_beside("args.json", {"model": "FOLDER/evil.py:net"}),
        ("extract", "inspect"),
        ("evil.py:net", "--trust-code"),
        trusted_marker=True,
        succeeds=("inspect",),
    ),
]


@pytest.mark.parametrize(("attack", "command"), cases(ATTACKS), ids=case_ids(ATTACKS))
def test_factory_named_by_a_file_never_runs(attack: Attack, command: str, tmp_path: Path) -> None:
    check_attack(attack, command, tmp_path)


@pytest.mark.parametrize("attack", ATTACKS, ids=str)
def test_with_trust_code_the_factory_runs(attack: Attack, tmp_path: Path) -> None:
    check_trusted(attack, tmp_path)


def test_inspect_says_the_named_factory_needs_trust_code(tmp_path: Path) -> None:
    from tests.helpers.cli import cli

    crafted = _config_inside(tmp_path)
    res = cli("inspect", crafted.target)
    assert res.exit_code == 0, res.output
    assert "names the model factory 'os:system'" in res.stdout and "--trust-code" in res.stdout
    assert not crafted.markers[0].exists()
