"""The forward loop's borrowed state (`extraction.forward`, `extraction.device`): hooks removed
and train/eval modes restored, even when the forward pass fails."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ncinspect.errors import ModelError
from ncinspect.extraction.device import borrowed_eval
from ncinspect.extraction.forward import _probe
from tests.helpers.models import Env, make_model


def test_hooks_removed_and_modes_restored_even_on_failure(env: Env) -> None:
    model = make_model(env.module).train()
    model.body[0].eval()
    with borrowed_eval(model):
        assert not any(m.training for m in model.modules())
        with pytest.raises(ModelError):
            _probe(model, torch.zeros(2, 9), Path("c.pt"))  # wrong width: forward fails
        out, calls, inputs = _probe(model, torch.zeros(2, 6), Path("c.pt"))
    assert [c.name for c in calls] == ["body.0", "body.2", "head"]
    assert model.training and not model.body[0].training and model.body[2].training
    assert all(not m._forward_pre_hooks for m in model.modules())
