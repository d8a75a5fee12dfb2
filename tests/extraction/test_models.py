"""Models (`extraction.models`): strict loading that lists every problem in one line, and the
head candidates (weight pairs, last first)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

from ncinspect.errors import CheckpointError
from ncinspect.extraction.models import ModelSpec, load_strict, weight_pairs
from tests.helpers.models import make_model


def test_strict_load_lists_every_problem_in_one_line(
    tmp_path: Path, tiny: tuple[Path, ModuleType]
) -> None:
    sd = make_model(tiny[1]).state_dict()
    bad = dict(sd)
    del bad["head.bias"]
    bad["extra.weight"] = torch.zeros(2)
    bad["body.0.weight"] = torch.zeros(5, 6)
    model = make_model(tiny[1])
    with pytest.raises(CheckpointError) as err:
        load_strict(model, bad, tmp_path / "c.pt", ModelSpec("m.py:tiny", {"hidden": 8}))
    message = str(err.value)
    assert "\n" not in message
    assert "missing keys (1): head.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "body.0.weight checkpoint (5, 6) vs model (8, 6)" in message
    assert "m.py:tiny(hidden=8)" in message
    # a wrapper prefix on every key (Lightning's `model.`) is removed when that makes it fit
    assert load_strict(model, {f"model.{k}": v for k, v in sd.items()}, "c.pt") == "model."


def test_weight_pairs_last_first(tiny: tuple[Path, ModuleType]) -> None:
    pairs = weight_pairs(make_model(tiny[1]).state_dict())
    assert [p["module"] for p in pairs] == ["head", "body.2", "body.0"]
    assert pairs[0] == {"module": "head", "weight": [3, 8], "bias": [3]}
