"""The model's output against its head's own W h + b (`forward.head_output_note`): a model that
changes the logits after the head (here: doubles them) is named in a warning and in the store's
provenance; a model that returns the head's output is not."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.helpers.cli import cli

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
            self.head = nn.Linear(8, 3)
            self.scale = scale

        def forward(self, x):
            return self.head(self.body(x)) * self.scale


    def make(scale=1.0):
        torch.manual_seed(0)
        return Net(scale)
    """
)


@pytest.mark.parametrize(("scale", "warned"), [(1.0, False), (2.0, True)])
def test_a_model_that_rescales_its_head_output_is_named(
    tmp_path: Path, scale: float, warned: bool
) -> None:
    (tmp_path / "net.py").write_text(FACTORY)
    torch.manual_seed(1)
    state = {
        "body.0.weight": torch.randn(8, 6),
        "body.0.bias": torch.randn(8),
        "head.weight": torch.randn(3, 8),
        "head.bias": torch.randn(3),
    }
    torch.save(state, tmp_path / "epoch_1.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d_test.npz", x=rng.normal(size=(30, 6)).astype(np.float32),
             y=np.arange(30) % 3)  # fmt: skip
    out = tmp_path / "f"
    res = cli(
        "extract", tmp_path / "epoch_1.pt", "--data", tmp_path / "d_test.npz", "--out", out,
        "--model", f"{tmp_path / 'net.py'}:make", "--model-arg", f"scale={scale}",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    with h5py.File(out / tmp_path.name / "epoch_1.pt.test.h5", "r") as f:
        prov = json.loads(f.attrs["provenance"])
        h, z = f["features"][()], f["outputs"][()]
        w, b = f["head/weight"][()], f["head/bias"][()]
    np.testing.assert_allclose(z, scale * (h @ w.T + b), rtol=1e-5, atol=1e-5)
    assert ("head_output_check" in prov) is warned
    assert ("differs from its head's output" in res.stderr) is warned
    if warned:
        assert "by 0.5 (relative" in prov["head_output_check"]  # (2z - z) / |2z|
